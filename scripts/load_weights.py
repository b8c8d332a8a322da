"""Loads a brainfloat weights file into the record's PyTorch GPT and prints its loss.

The check that a weights file is PyTorch's: the safetensors file is read with torch alone (an
8-byte header length, a JSON header, raw little-endian tensors), loaded with
`load_state_dict(strict=True)` into `scripts/pytorch_reference.py`'s GPT built to the file's
shapes, every tensor in the file's dtype, and the record's loss computed on the tokens given.

    target/torch-venv/bin/python scripts/load_weights.py WEIGHTS.safetensors TOKENS.json

TOKENS.json: {"heads": H, "inputs": [[...], ...], "targets": [[...], ...]} (B × T token ids;
the file does not say how the width splits into heads). Prints one
JSON line: {"loss": ..., "dtypes": {name: dtype}, "parameters": n}.
"""

import json
import struct
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from pytorch_reference import GPT  # noqa: E402

DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}


def read_safetensors(path):
    data = Path(path).read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    header.pop("__metadata__", None)
    body = memoryview(data)[8 + length :]
    tensors = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        flat = torch.frombuffer(bytearray(body[start:end]), dtype=DTYPES[info["dtype"]])
        tensors[name] = flat.reshape(info["shape"])
    return tensors


def main():
    weights, tokens = read_safetensors(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())
    vocab, dim = weights["transformer.wte.weight"].shape
    layers = 1 + max(int(n.split(".")[2]) for n in weights if n.startswith("transformer.h."))
    heads = tokens["heads"]
    model = GPT(vocab, layers, heads, dim)
    # Each parameter takes the file's dtype, as brainfloat stored it.
    for name, param in model.named_parameters():
        param.data = param.data.to(weights[name].dtype)
    model.load_state_dict(weights, strict=True)
    inputs = torch.tensor(tokens["inputs"])
    targets = torch.tensor(tokens["targets"])
    with torch.no_grad():
        loss = model(inputs, targets).item()
    dtypes = {n: str(p.dtype).removeprefix("torch.") for n, p in model.named_parameters()}
    print(json.dumps({"loss": loss, "dtypes": dtypes, "parameters": len(dtypes)}))


if __name__ == "__main__":
    main()
