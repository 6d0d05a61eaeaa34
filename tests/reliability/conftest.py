"""Small inputs for the reliability tests: a run config over synthetic stores, and a tiny
pretrained model with its tokenizer and two data files for ``finetune``.

Self-contained (no fixtures from the other test folders), CPU, a few seconds to build.
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
import yaml  # noqa: E402

VOCAB, EOS = 64, 0
WORDS = ("etxe mendi ur itsaso herri lagun eguzki gaur bihar ona handia txikia da dago eta baina zer nola non "
         "the a file system command option user output input default value program manual").split()


def run_config(stores: dict[str, Path], out: Path) -> dict:
    """A 2-layer model, 8 pre-training steps then 8 fine-tuning steps with replay, checkpoints every 4."""
    return {
        "name": "tiny", "out_dir": str(out),
        "model": {"preset": "tiny", "overrides": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                                  "num_attention_heads": 2}},
        "data": {"sources": {n: {"store": str(p)} for n, p in stores.items()}, "seq_len": 16, "batch_size": 8},
        "phases": [
            {"name": "pre", "steps": 8, "constant": "generic", "lr": {"peak": 3e-3, "warmup": 0.1}},
            {"name": "ft", "finetune": {"target_steps": 1, "epochs": 4, "replay": 0.5}, "reset_optimizer": True,
             "lr": {"peak": 1e-3, "warmup": 0.25}},
        ],
        "eval": {"interval": 4, "sequences": 8, "batch_size": 8},
        "checkpoint": {"interval": 4, "keep": 2},
        "progress": False,
    }


@pytest.fixture(scope="session")
def train_inputs(tmp_path_factory):
    """``config``: a run config YAML (its out_dir under the folder); ``stores``: the two token stores."""
    from replaytune.data.store import write_store

    root = tmp_path_factory.mktemp("reliability_train")
    rng = np.random.default_rng(5)
    stores = {}
    for name, (lo, n_train) in {"generic": (1, 60), "target": (32, 12)}.items():
        docs = lambda n: [np.append(rng.integers(lo, lo + 31, int(rng.integers(20, 40))), EOS) for _ in range(n)]  # noqa: E731
        write_store(root / name, docs(n_train), docs(8), vocab_size=VOCAB, eos_id=EOS, fingerprint=f"fp-{name}")
        stores[name] = root / name
    config = root / "run.yaml"
    config.write_text(yaml.safe_dump(run_config(stores, root / "default-out")))
    return SimpleNamespace(root=root, config=config, stores=stores)


@pytest.fixture(scope="session")
def ft_inputs(tmp_path_factory):
    """A tiny Llama (2 layers, hidden 32) with a byte-level BPE tokenizer, target and replay .jsonl files."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from replaytune.data.tokenizer import load_tokenizer, train_tokenizer

    root = tmp_path_factory.mktemp("reliability_finetune")
    rng = np.random.default_rng(3)

    def text(k: int) -> str:
        return " ".join(WORDS[int(i)] for i in rng.integers(0, len(WORDS), k)).capitalize() + "."

    target, generic = root / "target.jsonl", root / "generic.jsonl"
    target.write_text("".join(json.dumps({"text": text(30)}) + "\n" for _ in range(20)))
    generic.write_text("".join(json.dumps({"text": text(30)}) + "\n" for _ in range(60)))
    train_tokenizer([str(target), str(generic)], 300, root / "tok")
    tok = load_tokenizer(root / "tok")
    import torch

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=False, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(str(root / "model"))
    tok.save_pretrained(str(root / "model"))
    return SimpleNamespace(root=root, model=root / "model", target=target, generic=generic)


def finetune_argv(ft, out: Path, *extra: str) -> list[str]:
    """A fine-tune of a few seconds: seq 32, batch 4, one epoch, half replay."""
    return ["finetune", "--model", str(ft.model), "--target", str(ft.target), "--replay", str(ft.generic),
            "--replay-val", "5", "--seq-len", "32", "--batch-size", "4", "--micro-batch-size", "2", "--epochs", "1",
            "--lr", "3e-3", "--eval-sequences", "4", "--eval-interval", "0", "--device", "cpu", "--no-progress",
            "--output", str(out), *extra]
