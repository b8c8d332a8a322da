"""Hugging Face's side of the GPT-2 parity tests (tests/hf_gpt2.rs), with `transformers` from
PyPI and no model hub.

  hf_gpt2.py make DIR [VOCAB]
                          a randomly initialised small GPT2LMHeadModel (of VOCAB ids, default
                          384), saved by transformers itself (config.json + model.safetensors)
                          into DIR, and
                          DIR/reference.json: token ids and the logits transformers computes
                          for them in fp32 and with the model in bf16
  hf_gpt2.py logits DIR TOKENS_JSON
                          the fp32 logits of the model in DIR (as GPT2LMHeadModel.from_pretrained
                          loads it) for the token ids in TOKENS_JSON ([[...], ...]), as JSON
"""

import json
import sys

import torch
from transformers import GPT2Config, GPT2LMHeadModel

# A shape with every part of GPT-2 and a width that is not 4 × d (n_inner), small enough for CI.
CONFIG = dict(
    n_positions=48,
    n_embd=64,
    n_layer=2,
    n_head=4,
    n_inner=160,
    activation_function="gelu_new",
    resid_pdrop=0.0,
    embd_pdrop=0.0,
    attn_pdrop=0.0,
)


def logits(model, tokens):
    with torch.no_grad():
        out = model(torch.tensor(tokens, dtype=torch.long)).logits
    return out.float().flatten().tolist()


def make(folder, vocab):
    torch.manual_seed(20261203)
    # GPT-2's <|endoftext|> where the vocabulary has it, else its last id.
    end = min(50256, vocab - 1)
    config = GPT2Config(**CONFIG, vocab_size=vocab, bos_token_id=end, eos_token_id=end)
    model = GPT2LMHeadModel(config).eval()
    # Biases and LayerNorms start at 0 and 1: move them off, so that loading them is tested.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias") or ".ln_" in name:
                param.add_(torch.randn_like(param) * 0.1)
    model.save_pretrained(folder, safe_serialization=True)
    generator = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, vocab, (2, 40), generator=generator).tolist()
    reference = {
        "tokens": tokens,
        "logits_fp32": logits(model, tokens),
        "logits_bf16": logits(model.to(torch.bfloat16), tokens),
    }
    with open(f"{folder}/reference.json", "w") as f:
        json.dump(reference, f)


def main():
    command = sys.argv[1]
    if command == "make":
        make(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 384)
    elif command == "logits":
        model = GPT2LMHeadModel.from_pretrained(sys.argv[2], dtype=torch.float32).eval()
        with open(sys.argv[3]) as f:
            tokens = json.load(f)
        json.dump(logits(model, tokens), sys.stdout)
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()
