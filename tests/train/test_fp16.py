"""fp16 compute with a gradient scaler (GPUs without bf16); refused on CPU."""

from __future__ import annotations

import math

import pytest

from .helpers import tiny_config
from replaytune.errors import ConfigError
from replaytune.train import loop as loop_module
from replaytune.train import read_metrics, train
from replaytune.train.distributed import resolve_precision


def test_fp16_on_cpu_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"^dtype fp16 \(with a gradient scaler\) is for GPUs without bf16 \(T4, V100\); on CPU use fp32$"):
        resolve_precision("fp16", "cpu")
    assert resolve_precision("auto", "cpu") == "fp32"


def test_fp16_path_trains_through_the_scaler(stores, tmp_path, monkeypatch):
    # the GPU path, run on CPU: fp16 autocast and torch.amp.GradScaler("cpu") behave the same way here
    monkeypatch.setattr(loop_module, "resolve_precision", lambda dtype, device: "fp16")
    scalers = []
    real = loop_module.Trainer._update

    def spy(self, s):
        scalers.append(self.scaler)
        return real(self, s)

    monkeypatch.setattr(loop_module.Trainer, "_update", spy)
    cfg = tiny_config(stores, tmp_path / "run", phases=[{"name": "p", "steps": 6, "constant": "generic",
                                                          "lr": {"peak": 3e-3, "warmup": 0.1}}])
    record = train(cfg)
    scaler = scalers[-1]
    assert scaler.is_enabled() and scaler.get_scale() > 0 and len(scalers) == 6
    losses = [m["loss"] for m in read_metrics(tmp_path / "run") if m["kind"] == "train"]
    assert losses and all(math.isfinite(v) for v in losses)
    assert record["steps"] == 6
