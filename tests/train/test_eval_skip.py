"""``eval.skip``: a held-out set left out of evaluation gives the same numbers for what is kept."""

from __future__ import annotations

import pytest

from .helpers import tiny_config
from replaytune.errors import ConfigError
from replaytune.train import train


def _final(cfg):
    return train(cfg)["final"]["eval"]


def test_skipping_a_validation_half_or_a_source_leaves_the_other_losses_unchanged(stores, tmp_path):
    ev = {"interval": 0, "sequences": 8, "batch_size": 4, "split": True}
    full = _final(tiny_config(stores, tmp_path / "full", eval=ev))
    part = _final(tiny_config(stores, tmp_path / "part", eval={**ev, "skip": ["generic/val"]}))
    assert part["generic/val"] is None and part["generic"] is None  # no whole-set mean of half a set
    assert part["generic/test"] == full["generic/test"]  # the kept half: same sequences, same loss
    assert {k: part[k] for k in ("target", "target/val", "target/test")} == {
        k: full[k] for k in ("target", "target/val", "target/test")}
    none = _final(tiny_config(stores, tmp_path / "none", eval={**ev, "skip": ["generic"]}))
    assert none["generic"] is None and none["generic/test"] is None and none["target/test"] == full["target/test"]


@pytest.mark.parametrize("skip, split, words", [
    (["wiki"], True, "neither a source"),
    (["generic/test"], True, "neither a source"),
    (["generic/val"], False, "eval.split is off"),
])
def test_a_bad_skip_entry_is_named(stores, tmp_path, skip, split, words):
    with pytest.raises(ConfigError, match=words):
        tiny_config(stores, tmp_path, eval={"split": split, "skip": skip})
