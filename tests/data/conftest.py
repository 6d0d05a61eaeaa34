"""Fixtures for the data-layer tests: a tiny byte-level BPE trained once per session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

# A few kilobytes of varied English and code so BPE learns a 512-token vocabulary quickly.
TRAIN_TEXT = """\
The quick brown fox jumps over the lazy dog. A language model predicts the next token.
Replay of generic pre-training data during fine-tuning improves the target loss.
def add(a, b):
    return a + b

class Store:
    def __init__(self, path):
        self.path = path
User: hello there, how are you today?
Assistant: I am fine, thank you. How can I help you with your question?
Kaixo! Zer moduz zaude gaur? Ondo nago, eskerrik asko.
"""


@pytest.fixture(scope="session")
def tiny_tok_path(tmp_path_factory):
    from replaytune.data.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("tok")
    src = root / "train.txt"
    src.write_text(TRAIN_TEXT * 20 + "".join(f"word{i} number {i * 7}\n" for i in range(300)))
    out = root / "tiny"
    train_tokenizer([str(src)], 512, out)
    return str(out)


@pytest.fixture(scope="session")
def tiny_tok(tiny_tok_path):
    from replaytune.data.tokenizer import load_tokenizer

    return load_tokenizer(tiny_tok_path)
