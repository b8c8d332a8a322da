"""Makes a byte-level BPE tokenizer with Hugging Face's `tokenizers` (trained on the text given),
saves it as tokenizer.json and prints, as JSON, the ids it gives a probe text. Used by
tests/hf_tokenizer.rs: our HfTokenizer must give the same ids.

    python scripts/hf_tokenizer.py TRAINING_TEXT OUT_DIR PROBE_TEXT
"""

import json
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

training, out, probe = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]).read_text()
tokenizer = Tokenizer(models.BPE())
tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tokenizer.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(
    vocab_size=600,
    special_tokens=["<|endoftext|>"],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
)
tokenizer.train([str(training)], trainer)
tokenizer.save(str(out / "tokenizer.json"))
encoding = tokenizer.encode(probe, add_special_tokens=False)
print(
    json.dumps(
        {
            "ids": encoding.ids,
            "vocab_size": tokenizer.get_vocab_size(with_added_tokens=True),
            "end_of_text": tokenizer.token_to_id("<|endoftext|>"),
            "decoded": tokenizer.decode(encoding.ids, skip_special_tokens=False),
        }
    )
)
