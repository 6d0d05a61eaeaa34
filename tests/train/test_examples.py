"""The example configs validate as shipped and run (shortened) on the synthetic stores."""

from __future__ import annotations

import importlib.util

import pytest

from .helpers import REPO
from replaytune import config
from replaytune.train import read_metrics, train

EXAMPLES = REPO / "examples"


@pytest.fixture(scope="module")
def example_stores(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("make_synthetic_stores", EXAMPLES / "make_synthetic_stores.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make(tmp_path_factory.mktemp("example-data"))


@pytest.mark.parametrize(
    "name, shorten, steps, evals",
    [
        ("pretrain", ["phases.0.steps=6"], 6, [6]),
        # fine-tuning: 2 batches x 1 epoch / (1 - 0.5) = 4 steps after 4 pre-training steps
        ("finetune_replay", ["phases.0.steps=4", "phases.1.finetune.epochs=1"], 8, [4, 8]),
        # delta = 0.125 of 16 steps: Stage 2 starts at 14, evaluated there and at the end; the
        # automatic interval adds floor(0.05 * 3 * 16 steps * 16 seqs / 16 eval seqs) = 2 evals
        # (every ceil(16 / 2) = 8 steps); the shorter runs above get at most 1 (at their end)
        ("midtrain", ["phases.0.steps=16", "phases.0.two_stage.gamma=0.0625"], 16, [8, 14, 16]),
    ],
)
def test_example_runs(example_stores, tmp_path, name, shorten, steps, evals):
    path = EXAMPLES / f"{name}.yaml"
    assert config.load(path).name  # validates as shipped
    overrides = [f"data.sources.{src}.store={p}" for src, p in example_stores.items()]
    overrides += shorten + ["eval.sequences=8", "progress=false", "checkpoint.interval=0"]
    cfg = config.load(path, overrides)
    record = train(cfg, out_dir=tmp_path / name)
    assert record["steps"] == steps
    assert [r["step"] for r in read_metrics(tmp_path / name) if r["kind"] == "eval"] == evals
    assert set(record["final"]["eval"]) == {"generic", "target"}
