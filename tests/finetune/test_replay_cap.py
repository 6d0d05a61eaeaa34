"""A big replay source is tokenized only as far as the run draws from it (plus held-out and a margin)."""

from __future__ import annotations

import json

import numpy as np

from replaytune.data.store import TokenStore
from replaytune.finetune import load_config, run_finetune
from replaytune.finetune.plan import plan_replay, replay_read_cap

from .conftest import EN, base_values, sentences


def _big_replay(path, docs: int):
    rng = np.random.default_rng(3)
    path.write_text("".join(json.dumps({"text": sentences(EN, rng, 6)}) + "\n" for _ in range(docs)))
    return path


def test_a_large_replay_source_is_read_only_as_far_as_the_run_needs(assets, tmp_path):
    big = _big_replay(tmp_path / "web.jsonl", 6000)
    values = base_values(assets, tmp_path / "out", replay={"path": str(big), "val": 0.2}, replay_fraction=0.5)
    res = run_finetune(load_config(None, values), prepare_only=True, log=lambda s: None)
    target, replay = TokenStore(res.output / "data" / "target"), TokenStore(res.output / "data" / "generic")
    stats = replay.meta["stats"]
    assert stats["complete"] is False and stats["documents_read"] < 6000 // 2
    # what the run draws from the replay store fits in what was tokenized: no sequence repeats
    plan = plan_replay(target, replay, replay_fraction=0.5, epochs=1, seq_len=32, batch_size=4)
    drawn = plan.steps * 4 * plan.weights["generic"]
    assert drawn <= replay.train.num_sequences(32)
    cap = replay_read_cap(target, replay_fraction=0.5, epochs=1, seq_len=32, batch_size=4, val_fraction=0.2,
                          eval_sequences=8)
    assert replay.train.num_tokens + replay.val.num_tokens >= cap
    assert replay.val.num_sequences(32) >= 8  # the forgetting evaluation's held-out sequences are there
    # a larger replay fraction needs more: the store reads further
    values["replay_fraction"] = 0.875
    run_finetune(load_config(None, {**values, "output": str(tmp_path / "out2")}), prepare_only=True, log=lambda s: None)
    more = TokenStore(tmp_path / "out2" / "data" / "generic")
    assert more.train.num_tokens > replay.train.num_tokens


def test_no_cap_without_replay_or_for_examples(assets, tmp_path):
    values = base_values(assets, tmp_path / "out", replay_fraction=0.0)
    res = run_finetune(load_config(None, values), prepare_only=True, log=lambda s: None)
    target = TokenStore(res.output / "data" / "target")
    assert replay_read_cap(target, replay_fraction=0.0, epochs=1, seq_len=32, batch_size=4) is None
    assert replay_read_cap(target, replay_fraction=0.5, epochs=1, seq_len=32, batch_size=4, unit="examples") is None
    assert TokenStore(res.output / "data" / "generic").meta["stats"]["complete"] is True
