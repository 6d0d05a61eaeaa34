"""Shared fixtures: synthetic stores and one reference run of the tiny two-phase config."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from .helpers import make_stores, tiny_config
from replaytune.train import read_metrics, train

torch.set_num_threads(1)  # bit-identity across processes needs one thread count everywhere


@pytest.fixture(scope="session")
def stores(tmp_path_factory):
    return make_stores(tmp_path_factory.mktemp("stores"))


@pytest.fixture(scope="session")
def masked_stores(tmp_path_factory):
    return make_stores(tmp_path_factory.mktemp("masked"), masked=True)


@pytest.fixture(scope="session")
def reference(stores, tmp_path_factory):
    """The tiny config (12 pre-training + 8 fine-tuning steps) run once, uninterrupted."""
    out = tmp_path_factory.mktemp("reference") / "run"
    cfg = tiny_config(stores, out)
    record = train(cfg)
    return SimpleNamespace(cfg=cfg, out=out, record=record, metrics=read_metrics(out))
