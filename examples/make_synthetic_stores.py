"""Write the two small token stores the example configs read (about one second, no downloads).

    python examples/make_synthetic_stores.py [OUT_DIR]     (default: examples/data)

Both stores share one made-up 512-token vocabulary (EOS = 0), so the examples run anywhere:

* ``generic`` (~400k training tokens): a Markov chain on ids 1..255 where every id has four
  likely successors: a model can learn it down to about ln 4 = 1.4 nats per token;
* ``target`` (32 training sequences of 128 tokens = 2 batches of 16, the "unique target
  data" of the fine-tuning and mid-training examples): counting runs on ids 256..511 with a
  stride drawn per document, predictable once the stride is seen.

Each also gets a validation split. Real text goes through ``replaytune tokenizer train`` and
``replaytune prepare`` instead (see the comments at the top of each example config).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from replaytune.data.store import write_store

VOCAB = 512
EOS = 0
SEQ = 128


def generic_docs(rng: np.random.Generator, tokens: int) -> list[np.ndarray]:
    table = np.random.default_rng(7).integers(1, 256, size=(256, 4))  # the same chain for every split
    docs, total = [], 0
    while total < tokens:
        length = int(rng.integers(100, 600))
        doc = np.empty(length + 1, dtype=np.int64)
        doc[0] = rng.integers(1, 256)
        choice = rng.integers(0, 4, size=length)
        for i in range(1, length):
            doc[i] = table[doc[i - 1], choice[i]]
        doc[length] = EOS
        docs.append(doc)
        total += len(doc)
    return docs


def target_docs(rng: np.random.Generator, tokens: int) -> list[np.ndarray]:
    docs, total = [], 0
    while total < tokens:
        length = min(int(rng.integers(40, 200)), tokens - total)
        start, stride = int(rng.integers(0, 256)), int(rng.integers(1, 4))
        doc = np.array([256 + (start + stride * i) % 256 for i in range(max(length - 1, 1))] + [EOS])
        docs.append(doc)
        total += len(doc)
    return docs


def make(out: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    out.mkdir(parents=True, exist_ok=True)
    # train tokens = sequences * SEQ + 1 (sequence i spans tokens [i*SEQ, i*SEQ + SEQ]).
    specs = {"generic": (generic_docs, 400_000, 40_000), "target": (target_docs, 32 * SEQ + 1, 16 * SEQ + 1)}
    paths = {}
    for name, (docs, n_train, n_val) in specs.items():
        store = write_store(
            out / name, docs(rng, n_train), docs(rng, n_val), vocab_size=VOCAB, eos_id=EOS, fingerprint=f"synthetic-{name}-v1"
        )
        print(f"{store.path}: {store.train.num_sequences(SEQ)} train / {store.val.num_sequences(SEQ)} val sequences of {SEQ}")
        paths[name] = store.path
    return paths


if __name__ == "__main__":
    make(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "data")
