"""The run plan: phases on one step axis, seeds, LR, resets, and prefix fingerprints."""

from __future__ import annotations

import numpy as np
import pytest

from .helpers import tiny_config
from replaytune import config
from replaytune.schedule import lr_factor
from replaytune.train import RunPlan, open_stores, phase_seed, shared_prefix, step_signatures


def _override(cfg, *items):
    return config.validate(config.apply_overrides(cfg.model_dump(mode="json"), list(items)))


def test_phase_seed_is_stable_and_distinct():
    assert phase_seed(0, 0) == phase_seed(0, 0)
    seeds = {phase_seed(s, i) for s in range(4) for i in range(4)}
    assert len(seeds) == 16 and all(0 <= x < 2**56 for x in seeds)


def test_phases_on_one_axis(stores, tmp_path):
    cfg = tiny_config(stores, tmp_path)
    plan = RunPlan(cfg, open_stores(cfg))
    assert plan.total_steps == 20 and plan.phase_ends() == [12, 20]
    assert [(p.name, p.start, p.steps) for p in plan.phases] == [("pre", 0, 12), ("ft", 12, 8)]
    assert plan.phase_at(11)[0].name == "pre" and plan.phase_at(12) == (plan.phases[1], 0)
    assert plan.position(12) == (plan.phases[0], 12) and plan.position(13) == (plan.phases[1], 1)
    assert [s for s in range(20) if plan.reset_at(s)] == [12]
    assert plan.lr_at(12) == 1e-3 * lr_factor(0, 8, warmup=0.25)
    assert [p.seed for p in plan.phases] == [phase_seed(0, 0), phase_seed(0, 1)]
    # the global batch at a fine-tuning step is the phase mixture's batch at the phase step
    batch, src = plan.global_batch(15)
    direct = plan.phases[1].mixture.global_batch(3)
    assert np.array_equal(batch.ids, direct.ids)
    assert [plan.sources[i] for i in src] == [direct.sources[i] for i in direct.source_index]
    seen = plan.sequences_seen(20)
    assert seen == {"generic": 12 * 8 + 8 * 4, "target": 8 * 4}


def test_stage_switches_of_two_stage(stores, tmp_path):
    cfg = tiny_config(
        stores, tmp_path,
        phases=[{"name": "mid", "steps": 32, "two_stage": {"gamma": 0.0625, "replay": 0.5, "alpha": 1.0}, "lr": {"schedule": "wsd"}}],
    )
    plan = RunPlan(cfg, open_stores(cfg))
    # delta = gamma * alpha / (1 - rho) = 0.125: Stage 2 is the last 4 of 32 steps
    assert plan.stage_switches() == [28]


def test_signatures_ignore_what_does_not_change_training(stores, tmp_path):
    cfg = tiny_config(stores, tmp_path / "a")
    same = _override(
        cfg, f"out_dir={tmp_path / 'b'}", "name=other", "eval.interval=2", "checkpoint.keep=5",
        "data.micro_batch_size=2", "log_interval=3", "phases.0.name=warm",
    )
    sigs = step_signatures(cfg)
    assert len(sigs) == 21 and len(set(sigs)) == 21
    assert step_signatures(same) == sigs


@pytest.mark.parametrize(
    "change, shared",
    [
        ("phases.1.lr.peak=0.002", 12),  # the fine-tuning LR differs from its first step
        ("phases.1.reset_optimizer=false", 12),  # same LR and batches, but no reset at step 12
        ("phases.1.finetune.replay=0.25", 12),
        ("data.seed=3", 0),  # every batch differs
        ("phases.0.lr.peak=0.01", 0),
        ("model.init_seed=1", -1),  # different initial weights: nothing shared
        ("optim.beta2=0.99", -1),
    ],
)
def test_shared_prefix(stores, tmp_path, change, shared):
    cfg = tiny_config(stores, tmp_path)
    assert shared_prefix(cfg, _override(cfg, change)) == shared


def test_constant_lr_runs_of_different_length_share_their_common_steps(stores, tmp_path):
    """WSD decays at the end: a 40-step and a 60-step run agree until the shorter one decays."""
    phases = [{"name": "mid", "steps": 40, "uniform": {"gamma": 0.5}, "lr": {"schedule": "wsd", "warmup": 0.1, "decay": 0.25}}]
    short = tiny_config(stores, tmp_path, phases=phases)
    long = _override(short, "phases.0.steps=60", "phases.0.lr.warmup=0.065")
    # warmup ceil(0.1 x 40) = ceil(0.065 x 60) = 4 steps; the short run's decay covers steps
    # 30..39 with factors 1 - (s - 30) / 10, so its LR first drops below the long run's at 31
    assert shared_prefix(short, long) == 31


def test_source_sequence_limit_fixes_the_unique_data(stores, tmp_path):
    cfg = _override(tiny_config(stores, tmp_path), "data.sources.target.sequences=8")
    plan = RunPlan(cfg, open_stores(cfg))
    assert plan.train_sequences["target"] == 8
    ids = set()
    for step in range(12, 20):
        batch, src = plan.global_batch(step)
        ids |= {int(i) for i, s in zip(batch.ids, src) if plan.sources[s] == "target"}
    assert ids == set(range(8))  # 4 epochs over exactly the first 8 sequences
    too_many = _override(cfg, "data.sources.target.sequences=100000")
    with pytest.raises(config.ConfigError, match=r"data.sources.target: asks for 100000 sequences"):
        RunPlan(too_many, open_stores(too_many))


def test_phase_seed_varies_that_phase_only(stores, tmp_path):
    a = tiny_config(stores, tmp_path)
    b = _override(a, "phases.1.seed=7")
    pa, pb = RunPlan(a, open_stores(a)), RunPlan(b, open_stores(b))
    assert pb.phases[1].seed == 7 and pb.phases[0].seed == pa.phases[0].seed
    assert shared_prefix(a, b) == 12  # the whole pre-training is shared, fine-tuning differs


def test_warmup_in_steps_lets_runs_of_different_length_share_their_prefix(stores, tmp_path):
    # WSD pre-training of 12 vs 10 steps: with a 10 % warmup they differ from step 0
    # (ceil(1.2) = 2 vs 1 warmup steps); with warmup_steps=2 they share until the shorter decays.
    base = tiny_config(stores, tmp_path, phases=[{"name": "pre", "steps": 12, "constant": "generic",
                                                  "lr": {"peak": 3e-3, "schedule": "wsd", "warmup": 0.1, "decay": 0.2}}])
    short = _override(base, "phases.0.steps=10")
    assert shared_prefix(base, short) == 0
    a, b = _override(base, "phases.0.lr.warmup_steps=2"), _override(short, "phases.0.lr.warmup_steps=2")
    # the 10-step run decays over its last 2 steps; the first of them still runs at the peak
    assert shared_prefix(a, b) == 9
    assert RunPlan(a, open_stores(a)).lr_at(0) == 3e-3 / 2


def test_first_shifts_the_unique_data_and_changes_the_signature(stores, tmp_path):
    a = _override(tiny_config(stores, tmp_path), "data.sources.target.sequences=4")
    b = _override(a, "data.sources.target.first=4")
    pa, pb = RunPlan(a, open_stores(a)), RunPlan(b, open_stores(b))
    assert pb.first["target"] == 4 and pb.train_sequences["target"] == 4
    assert np.array_equal(pa.global_batch(12)[0].ids, pb.global_batch(12)[0].ids)  # same mixture ids ...
    assert shared_prefix(a, b) == 12  # ... but other sequences: fine-tuning steps differ
    with pytest.raises(config.ConfigError, match="from sequence 1000 on"):
        bad = _override(a, "data.sources.target.first=1000")
        RunPlan(bad, open_stores(bad))


def test_draw_shuffles_the_unique_data_into_disjoint_random_draws(stores, tmp_path):
    a = _override(tiny_config(stores, tmp_path), "data.sources.target.sequences=4", "data.sources.target.draw=3")
    b = _override(a, "data.sources.target.first=4")
    pa, pb = RunPlan(a, open_stores(a)), RunPlan(b, open_stores(b))
    n = pa.stores["target"].train.num_sequences(pa.seq_len)
    order = np.random.default_rng(3).permutation(n)
    assert pa.train_ids("target", np.arange(4)).tolist() == order[:4].tolist()
    assert pb.train_ids("target", np.arange(4)).tolist() == order[4:8].tolist()  # the next 4: disjoint
    assert pa.train_ids("target", np.arange(4)).tolist() != [0, 1, 2, 3]  # not the store's order
    assert pa.train_ids("generic", np.arange(3)).tolist() == [0, 1, 2]  # only the source with a draw
    plain = _override(a, "data.sources.target.draw=null")
    assert shared_prefix(a, plain) == 12  # other sequences from the first fine-tuning step on
    assert shared_prefix(a, _override(a, "data.sources.target.draw=4")) == 12
