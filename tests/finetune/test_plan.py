"""Replay weights and step counts: the replay fraction counts loss-bearing tokens, target epochs stay fixed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from replaytune import schedule
from replaytune.data.mixture import Mixture
from replaytune.data.store import write_store
from replaytune.errors import ConfigError, DataError
from replaytune.finetune import plan_replay, realised_units, sequence_units
from replaytune.schedule import Schedule, Stage
from replaytune.data.window import IGNORE, windows

L = 16


def _text_store(path, n_tokens, *, seed=0):
    rng = np.random.default_rng(seed)
    docs, left = [], n_tokens
    while left > 0:
        k = min(left, int(rng.integers(5, 40)))
        docs.append(np.append(rng.integers(1, 60, k - 1), 0))
        left -= k
    return write_store(path, docs, docs[:3], vocab_size=64, eos_id=0, fingerprint=f"t{seed}")


def _chat_store(path, n_docs, *, seed=1):
    """Documents whose loss mask covers a random 10-60% tail (an assistant reply after a prompt)."""
    rng = np.random.default_rng(seed)
    docs, masks = [], []
    for _ in range(n_docs):
        k = int(rng.integers(10, 50))
        reply = max(1, int(k * rng.uniform(0.1, 0.6)))
        docs.append(np.append(rng.integers(1, 60, k - 1), 0))
        masks.append((np.arange(k) >= k - reply).astype(np.uint8))
    return write_store(path, docs, docs[:4], vocab_size=64, eos_id=0, fingerprint=f"c{seed}",
                       masks={"train": masks, "val": masks[:4]})


def test_sequence_units_count_targets_documents_and_sequences(tmp_path):
    docs = [np.array([5, 6, 7, 0]), np.array([8, 9, 0]), np.array([1, 2, 3, 4, 0])]
    masks = [np.array([0, 0, 1, 1]), np.array([0, 1, 1]), np.array([0, 0, 0, 1, 1])]
    store = write_store(tmp_path / "s", docs, docs[:1], vocab_size=16, eos_id=0, masks={"train": masks, "val": masks[:1]})
    # 12 tokens, L = 4: windows [0:5], [4:9] (2 sequences). Targets of window i: mask[4i+1 : 4i+5].
    # mask = 0 0 1 1 | 0 1 1 | 0 0 0 1 1 -> [0 1 1 0] and [1 1 0 0]
    flat = np.concatenate(masks)
    assert list(sequence_units(store, 4, "tokens")) == [flat[1:5].sum(), flat[5:9].sum()] == [2, 2]
    # documents start at 0, 4, 7: window 0's inputs [0, 4) hold one start, window 1's [4, 8) two
    assert list(sequence_units(store, 4, "examples")) == [1, 2]
    assert list(sequence_units(store, 4, "sequences")) == [1, 1]
    # and the token count is what the loop's loss actually counts
    y = windows(store.train, np.arange(2), 4).targets
    assert list((y != IGNORE).sum(axis=1)) == [2, 2]


def test_text_only_matches_the_papers_finetune_schedule(tmp_path):
    target = _text_store(tmp_path / "t", 128 * L + 1)  # 128 sequences = 16 batches of 8
    generic = _text_store(tmp_path / "g", 40 * L + 1, seed=2)
    assert target.train.num_sequences(L) == 128
    for rho in (0.0, 0.5, 0.75, 0.875):
        plan = plan_replay(target, generic, replay_fraction=rho, epochs=4, seq_len=L, batch_size=8)
        paper = schedule.finetune(16, 4, rho)
        assert plan.steps == paper.steps  # 16 x 4 / (1 - rho): 64, 128, 256, 512
        assert plan.weights["target"] == pytest.approx(1 - rho)


def test_fractional_target_batches_round_up_to_whole_steps(tmp_path):
    target = _text_store(tmp_path / "t", 10 * L + 1)  # 10 sequences = 2.5 batches of 4
    plan = plan_replay(target, None, replay_fraction=0.0, epochs=3, seq_len=L, batch_size=4)
    assert plan.target_batches == 2.5 and plan.steps == math.ceil(10 * 3 / 4) == 8
    assert plan.weights == {"target": 1.0}


def test_token_counting_weights_follow_the_formula(tmp_path):
    target = _chat_store(tmp_path / "t", 120)
    generic = _text_store(tmp_path / "g", 4000)
    m_t = sequence_units(target, L, "tokens").mean()
    plan = plan_replay(target, generic, replay_fraction=0.5, epochs=3, seq_len=L, batch_size=8)
    a, b = 0.5 / m_t, 0.5 / L
    assert plan.units_per_sequence == {"target": pytest.approx(m_t), "generic": L}
    assert plan.weights["target"] == pytest.approx(a / (a + b))
    n_t = target.train.num_sequences(L)
    assert plan.steps == math.ceil(n_t * 3 / (8 * plan.weights["target"]))
    # counting sequences instead: the paper's w_t = 1 - rho, a longer run
    seq = plan_replay(target, generic, replay_fraction=0.5, epochs=3, seq_len=L, batch_size=8, unit="sequences")
    assert seq.weights == {"target": 0.5, "generic": 0.5} and seq.steps == math.ceil(n_t * 3 / 4) > plan.steps


@pytest.mark.parametrize("rho", [0.25, 0.5, 0.75])
@pytest.mark.parametrize("unit", ["tokens", "examples"])
def test_realised_share_matches_rho(tmp_path, rho, unit):
    target = _chat_store(tmp_path / "t", 150)
    generic = _text_store(tmp_path / "g", 20000)
    plan = plan_replay(target, generic, replay_fraction=rho, epochs=2, seq_len=L, batch_size=16, unit=unit)
    sizes = {"target": plan.sequences["target"], "generic": plan.sequences["generic"]}
    mixture = Mixture(Schedule([Stage(0, plan.weights)]), sizes, 16, plan.steps, seed=3)
    got = realised_units(mixture, {"target": target, "generic": generic}, L, unit)
    share = got["generic"] / (got["generic"] + got["target"])
    assert abs(share - rho) < 0.02, (unit, rho, share)
    assert mixture.epochs_consumed()["target"] == pytest.approx(2.0, abs=16 / sizes["target"])


def test_realised_units_equal_a_sum_over_the_actual_batches(tmp_path):
    target = _chat_store(tmp_path / "t", 60)
    generic = _text_store(tmp_path / "g", 3000)
    stores = {"target": target, "generic": generic}
    plan = plan_replay(target, generic, replay_fraction=0.5, epochs=3, seq_len=L, batch_size=8)
    sizes = {k: plan.sequences[k] for k in stores}
    mixture = Mixture(Schedule([Stage(0, plan.weights)]), sizes, 8, plan.steps, seed=11)
    brute = {"target": 0, "generic": 0}
    for s in range(plan.steps):
        b = mixture.global_batch(s)
        for i, name in enumerate(b.sources):
            ids = b.ids[b.source_index == i]
            if len(ids):
                y = windows(stores[name].train, ids, L).targets
                brute[name] += int((y != IGNORE).sum())
    assert realised_units(mixture, stores, L, "tokens") == {k: float(v) for k, v in brute.items()}


def test_impossible_plans_are_refused(tmp_path):
    target = _chat_store(tmp_path / "t", 30)
    with pytest.raises(ConfigError, match="needs a replay source"):
        plan_replay(target, None, replay_fraction=0.5, epochs=1, seq_len=L, batch_size=4)
    masked_out = write_store(tmp_path / "z", [np.arange(1, 40)], [np.arange(1, 40)], vocab_size=64, eos_id=0,
                             masks={"train": [np.zeros(39, np.uint8)], "val": [np.zeros(39, np.uint8)]})
    with pytest.raises(DataError, match="no loss-bearing tokens"):
        plan_replay(target, masked_out, replay_fraction=0.5, epochs=1, seq_len=L, batch_size=4)
    short = write_store(tmp_path / "short", [np.arange(1, 10)], [np.arange(1, 10)], vocab_size=64, eos_id=0)
    with pytest.raises(DataError, match="fewer than one sequence of 16"):
        plan_replay(short, None, replay_fraction=0.0, epochs=1, seq_len=L, batch_size=4)
    with pytest.raises(ConfigError, match=r"must be in \[0, 1\)"):
        plan_replay(target, target, replay_fraction=1.0, epochs=1, seq_len=L, batch_size=4)
