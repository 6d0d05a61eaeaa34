"""Fixtures for the practical fine-tuning tests: a tiny Llama saved locally, its tokenizer, data files.

The model is a real ``LlamaForCausalLM`` (hidden 32, MLP 64, 2 layers, 2 heads) written with
``save_pretrained`` and loaded by path through replaytune's loading code, with a byte-level BPE
(up to 1,024 ids) trained by ``replaytune.data.tokenizer.train_tokenizer`` on the test text and saved
beside it. ``model`` has no chat template; ``chat_model`` (same weights) has a ChatML one.

Data (deterministic): ``target.jsonl`` Basque-like text, ``generic.jsonl`` English-like text,
``chat.jsonl`` conversations, ``instruction.jsonl`` prompt/completion pairs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

EU = ("etxe mendi ur itsaso herri lagun eguzki gaur bihar ona handia txikia da dago eta baina zer nola non "
      "euskara hitz liburu ikasle irakasle eskola kale bide zuhaitz lore euri").split()
EN = ("the a file system command option user output input default value program manual page read write list "
      "print error return line text directory mode set use when with of to").split()
VOCAB = 1024


def sentences(words, rng, n):
    out = []
    for _ in range(n):
        k = int(rng.integers(5, 10))
        out.append(" ".join(words[int(i)] for i in rng.integers(0, len(words), k)).capitalize() + ".")
    return " ".join(out)


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def conversation(rng):
    q = sentences(EU, rng, 1) + " Zer da " + EU[int(rng.integers(0, len(EU)))] + "?"
    return [{"role": "user", "content": q}, {"role": "assistant", "content": sentences(EU, rng, 1)}]


def make_tiny_llama(path: Path, tok, *, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
        eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def assets(tmp_path_factory):
    from replaytune.data.chat import CHATML_TEMPLATE
    from replaytune.data.tokenizer import load_tokenizer, train_tokenizer

    root = tmp_path_factory.mktemp("finetune_assets")
    rng = np.random.default_rng(7)
    target = write_jsonl(root / "target.jsonl", [{"text": sentences(EU, rng, int(rng.integers(2, 5)))} for _ in range(30)])
    generic = write_jsonl(root / "generic.jsonl", [{"text": sentences(EN, rng, int(rng.integers(3, 7)))} for _ in range(120)])
    chat = write_jsonl(root / "chat.jsonl", [{"messages": conversation(rng)} for _ in range(60)])
    instruction = write_jsonl(
        root / "instruction.jsonl",
        [{"prompt": sentences(EU, rng, 1) + " ", "completion": sentences(EU, rng, 1)} for _ in range(40)],
    )
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(json.loads(line)["text"] for f in (target, generic) for line in f.read_text().splitlines())
                      + "\n<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n" * 300)
    train_tokenizer([str(corpus)], VOCAB, root / "tok")
    tok = load_tokenizer(root / "tok")
    model = make_tiny_llama(root / "model", tok)
    chat_tok = load_tokenizer(root / "tok")
    chat_tok.chat_template = CHATML_TEMPLATE
    chat_model = make_tiny_llama(root / "chat_model", chat_tok)
    return SimpleNamespace(root=root, target=target, generic=generic, chat=chat, instruction=instruction,
                           tokenizer=root / "tok", model=model, chat_model=chat_model)


def base_values(assets, out: Path, **overrides):
    """Flag values for a tiny, fast fine-tune (seq 32, batch 4, 8 held-out sequences, CPU)."""
    values = {
        "model": str(assets.model), "target": {"path": str(assets.target)}, "replay": {"path": str(assets.generic), "val": 10},
        "replay_fraction": 0.5, "epochs": 1, "seq_len": 32, "batch_size": 4, "micro_batch_size": 2, "lr": 3e-3,
        "eval_sequences": 8, "eval_interval": 0, "output": str(out), "progress": False, "device": "cpu",
    }
    values.update(overrides)
    return values


@pytest.fixture
def finetune_cfg(assets, tmp_path):
    from replaytune.finetune import load_config

    def make(**overrides):
        return load_config(None, base_values(assets, tmp_path / "out", **overrides))

    return make
