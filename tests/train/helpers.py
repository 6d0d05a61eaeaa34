"""Synthetic stores and tiny configs for the training tests.

Two sources with different token distributions over a 64-token vocabulary (EOS = 0):

* generic: a Markov chain on tokens 1..31 where each token has 3 likely successors
  (entropy about ln 3 = 1.1 nats per token at best);
* target: counting runs on tokens 32..63 (a random start per document), deterministic
  after the first token.

A model that learns both ends with target loss well below generic loss, and both below
the ln(64) = 4.16 of a uniform guess.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from replaytune import config
from replaytune.data.store import write_store

VOCAB = 64
EOS = 0
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
UNIFORM_LOSS = math.log(VOCAB)
REPO = Path(__file__).resolve().parents[2]


_TABLE = np.random.default_rng(99).integers(1, 32, size=(32, 3))  # one chain for train and val


def _generic_docs(rng, n, length):
    table = _TABLE
    docs = []
    for _ in range(n):
        t = int(rng.integers(1, 32))
        doc = [t]
        for _ in range(int(rng.integers(length // 2, length)) - 2):
            t = int(table[t, rng.integers(0, 3)])
            doc.append(t)
        docs.append(np.array(doc + [EOS]))
    return docs


def _target_docs(rng, n, length):
    docs = []
    for _ in range(n):
        start, stride = int(rng.integers(0, 32)), 1
        k = int(rng.integers(length // 2, length))
        docs.append(np.array([32 + (start + stride * i) % 32 for i in range(k)] + [EOS]))
    return docs


def make_stores(root: Path, *, masked: bool = False) -> dict[str, Path]:
    """generic (large) and target (small) stores under ``root``; returns their paths."""
    root = Path(root)
    rng = np.random.default_rng(1234)
    out = {}
    specs = {"generic": (_generic_docs, 120, 30, 80), "target": (_target_docs, 12, 6, 50)}
    for name, (make, n_train, n_val, length) in specs.items():
        train_docs, val_docs = make(rng, n_train, length), make(rng, n_val, length)
        masks = None
        if masked:  # first third of every document is "prompt": not a loss target
            masks = {
                split: [(np.arange(len(d)) >= len(d) // 3).astype(np.uint8) for d in docs]
                for split, docs in (("train", train_docs), ("val", val_docs))
            }
        write_store(
            root / name, train_docs, val_docs, vocab_size=VOCAB, eos_id=EOS, fingerprint=f"fp-{name}{'-m' if masked else ''}", masks=masks
        )
        out[name] = root / name
    return out


def tiny_config(stores: dict[str, Path], out: Path, **sections: Any) -> config.RunConfig:
    """Pre-train 12 steps on generic, then fine-tune 8 steps (target + 50% replay, reset)."""
    data: dict[str, Any] = {
        "name": "tiny",
        "out_dir": str(out),
        "model": {"preset": "tiny", "overrides": dict(TINY)},
        "data": {"sources": {n: {"store": str(p)} for n, p in stores.items()}, "seq_len": 16, "batch_size": 8},
        "phases": [
            {"name": "pre", "steps": 12, "constant": "generic", "lr": {"peak": 3e-3, "warmup": 0.1}},
            {
                "name": "ft",
                "finetune": {"target_steps": 1, "epochs": 4, "replay": 0.5},
                "reset_optimizer": True,
                "lr": {"peak": 1e-3, "warmup": 0.25},
            },
        ],
        "eval": {"interval": 5, "sequences": 8, "batch_size": 8},
        "checkpoint": {"interval": 4, "keep": 2},
        "progress": False,
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict) and key != "model":
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return config.validate(data)


def strip_timing(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in rec.items() if k not in ("tokens_per_s", "elapsed_s")} for rec in lines]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def python() -> str:
    return sys.executable


def dump_config(cfg: config.RunConfig, path: Path) -> Path:
    path.write_text(json.dumps(cfg.model_dump(mode="json")))
    return path
