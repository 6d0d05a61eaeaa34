"""The mixture: exact counts, bounded drift, determinism, direct access to any step, sharding, epochs."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replaytune import schedule as sched
from replaytune.data.mixture import Mixture
from replaytune.schedule import Schedule, ScheduleError, Stage


@st.composite
def mixtures(draw, max_sources=4):
    k = draw(st.integers(1, max_sources))
    names = [f"s{i}" for i in range(k)]
    steps = draw(st.integers(1, 120))
    starts = sorted(set([0] + draw(st.lists(st.integers(1, max(1, steps - 1)), max_size=3))))
    stages = []
    for s in starts:
        w = draw(st.lists(st.floats(0, 1), min_size=k, max_size=k))
        if sum(w) == 0:
            w[0] = 1.0
        stages.append(Stage(s, dict(zip(names, w))))
    sizes = {n: draw(st.integers(1, 50)) for n in names}
    batch = draw(st.integers(1, 24))
    seed = draw(st.integers(0, 2**31))
    return Mixture(Schedule(stages), sizes, batch, steps, seed=seed)


@settings(max_examples=60, deadline=None)
@given(mixtures())
def test_counts_are_exact_and_running_totals_never_drift_a_sequence(m):
    B = m.batch_size
    share = np.zeros(len(m.sources))
    taken = np.zeros(len(m.sources))
    for step in range(m.steps):
        w = np.array([m.schedule.weights_at(step)[n] for n in m.sources])
        c = np.array([m.counts(step)[n] for n in m.sources])
        assert c.sum() == B
        assert np.all(np.abs(c - w * B) < 1 + 1e-9)  # floor or ceil of w * B: within one sequence
        share += w * B
        taken += c
        assert np.all(np.abs(taken - share) < 1 + 1e-9)
        batch = m.batch(step)
        assert batch.counts() == m.counts(step)  # mixed inside the batch, as counted


@settings(max_examples=40, deadline=None)
@given(mixtures(), st.data())
def test_any_step_is_a_pure_function_and_resume_needs_only_the_step(m, data):
    step = data.draw(st.integers(0, m.steps - 1))
    again = Mixture(m.schedule, dict(zip(m.sources, m.sizes.tolist())), m.batch_size, m.steps, seed=m.seed)
    # a fresh object asked for one step directly equals the original after walking up to it
    for s in range(step + 1):
        walked = m.batch(s)
    direct = again.batch(step)
    assert np.array_equal(walked.ids, direct.ids) and np.array_equal(walked.source_index, direct.source_index)


@settings(max_examples=40, deadline=None)
@given(mixtures(), st.sampled_from([1, 2, 3, 4, 6]))
def test_ranks_get_disjoint_slices_whose_union_is_the_global_batch(m, world):
    if m.batch_size % world:
        with pytest.raises(ValueError, match="does not divide"):
            m.batch(0, 0, world)
        return
    for step in range(min(m.steps, 5)):
        g = m.global_batch(step)
        parts = [m.batch(step, r, world) for r in range(world)]
        assert np.array_equal(np.concatenate([p.ids for p in parts]), g.ids)
        assert np.array_equal(np.concatenate([p.source_index for p in parts]), g.source_index)
        assert sum(len(p) for p in parts) == m.batch_size


@settings(max_examples=40, deadline=None)
@given(mixtures())
def test_every_epoch_visits_every_sequence_once(m):
    seen: dict[tuple[int, int], list[int]] = {}
    for step in range(m.steps):
        b = m.batch(step)
        for src, i, e in zip(b.source_index, b.ids, b.epochs):
            seen.setdefault((int(src), int(e)), []).append(int(i))
    for (src, epoch), ids in seen.items():
        n = int(m.sizes[src])
        assert len(ids) == len(set(ids)) <= n  # no repeat inside an epoch
        if (epoch + 1) * n <= m.consumed(m.steps)[m.sources[src]]:
            assert sorted(ids) == list(range(n))  # a completed epoch saw all of them


def test_epochs_have_fresh_orders_and_seeds_matter():
    s = Schedule([Stage(0, {"t": 1})])
    m = Mixture(s, {"t": 64}, 8, 16, seed=1)
    first = np.concatenate([m.batch(i).ids for i in range(8)])
    second = np.concatenate([m.batch(i).ids for i in range(8, 16)])
    assert sorted(first) == sorted(second) == list(range(64))
    assert not np.array_equal(first, second)
    other = Mixture(s, {"t": 64}, 8, 16, seed=2)
    assert not np.array_equal(m.batch(0).ids, other.batch(0).ids)
    assert m.epochs_consumed() == {"t": 2.0}


def test_replay_half_puts_both_sources_in_every_batch():
    plan = sched.finetune(target_steps=1, epochs=8, replay=0.5)
    m = Mixture(plan.schedule, {"target": 16, "generic": 1000}, 16, plan.steps, seed=0)
    assert plan.steps == 16
    for step in range(plan.steps):
        assert m.counts(step) == {"target": 8, "generic": 8}
    assert m.epochs_consumed()["target"] == pytest.approx(8.0)


def test_two_stage_switch_is_exact():
    plan = sched.two_stage(64, 0.125, 0.5, 1.0)  # delta = 0.25: last 16 steps half target
    m = Mixture(plan.schedule, {"target": 100, "generic": 100}, 4, 64)
    assert plan.switch_step == 48
    assert all(m.counts(s)["target"] == 0 for s in range(48))
    assert all(m.counts(s)["target"] == 2 for s in range(48, 64))


def test_max_epochs_is_checked_when_built_and_names_source_and_step():
    plan = sched.finetune(target_steps=1, epochs=64, replay=0.5)
    with pytest.raises(ScheduleError, match=r"source 'target' allows max_epochs=32 .* passed at step 64"):
        Mixture(plan.schedule, {"target": 8, "generic": 100}, 8, plan.steps, max_epochs={"target": 32})
    Mixture(plan.schedule, {"target": 8, "generic": 100}, 8, plan.steps, max_epochs={"target": 64})


def test_empty_source_that_is_drawn_is_refused():
    with pytest.raises(ScheduleError, match="source 'target' has no training sequences"):
        Mixture(sched.uniform(0.5), {"target": 0, "generic": 10}, 4, 3)


def test_fingerprint_tracks_everything_that_changes_batches():
    s = sched.uniform(0.25)
    base = Mixture(s, {"target": 10, "generic": 10}, 4, 10).fingerprint()
    assert base == Mixture(s, {"target": 10, "generic": 10}, 4, 10).fingerprint()
    assert base != Mixture(s, {"target": 11, "generic": 10}, 4, 10).fingerprint()
    assert base != Mixture(s, {"target": 10, "generic": 10}, 4, 10, seed=1).fingerprint()
    assert base != Mixture(sched.uniform(0.5), {"target": 10, "generic": 10}, 4, 10).fingerprint()
