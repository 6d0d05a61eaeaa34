"""Ramps in the mixture: cumulative counts follow the integral, same batches at any world size and after resume."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replaytune import ramp as R
from replaytune.data.mixture import Mixture
from replaytune.schedule import ScheduleError


@st.composite
def ramps(draw, max_sources=3):
    k = draw(st.integers(2, max_sources))
    names = tuple(f"s{i}" for i in range(k))
    steps = draw(st.integers(1, 150))
    inner = sorted(draw(st.lists(st.floats(0, 1), max_size=4)))
    ts = [0.0] + inner + [1.0]
    pts = []
    for t in ts:
        w = draw(st.lists(st.floats(0, 1), min_size=k, max_size=k))
        if sum(w) == 0:
            w[0] = 1.0
        pts.append((t, tuple(x / sum(w) for x in w)))
    if len({t for t, _ in pts}) < len(pts):  # at most two points at one t
        seen, kept = {}, []
        for p in pts:
            seen[p[0]] = seen.get(p[0], 0) + 1
            if seen[p[0]] <= 2:
                kept.append(p)
        pts = kept
    ramp = R.Ramp(tuple(pts), steps, names)
    sizes = {n: draw(st.integers(1, 40)) for n in names}
    batch = draw(st.sampled_from([4, 8, 12, 16]))
    return Mixture(ramp, sizes, batch, steps, seed=draw(st.integers(0, 2**31)))


@settings(max_examples=80, deadline=None)
@given(ramps())
def test_cumulative_count_is_within_one_sequence_of_the_integral_at_every_step(m):
    exact = m.schedule.cumulative(np.arange(m.steps + 1)) * m.batch_size
    for s in range(m.steps + 1):
        got = np.array([m.consumed(s)[n] for n in m.sources])
        assert got.sum() == s * m.batch_size
        assert np.all(np.abs(got - exact[s]) < 1.0 + 1e-9), (s, got, exact[s])
    for s in range(m.steps):
        assert min(m.counts(s).values()) >= 0


@settings(max_examples=30, deadline=None)
@given(ramps(), st.data())
def test_batches_are_the_same_at_world_sizes_1_2_4_and_after_resume(m, data):
    step = data.draw(st.integers(0, m.steps - 1))
    g = m.global_batch(step)
    for world in (2, 4):
        parts = [m.batch(step, r, world) for r in range(world)]
        assert np.array_equal(np.concatenate([p.ids for p in parts]), g.ids)
        assert np.array_equal(np.concatenate([p.source_index for p in parts]), g.source_index)
    # a resumed process builds the mixture again and asks for the step directly
    again = Mixture(m.schedule, dict(zip(m.sources, m.sizes.tolist())), m.batch_size, m.steps, seed=m.seed)
    b = again.global_batch(step)
    assert np.array_equal(b.ids, g.ids) and np.array_equal(b.source_index, g.source_index)
    assert np.array_equal(b.epochs, g.epochs)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([0.25, 0.5, 1, 2, 3]), st.sampled_from([1, 3, 16, 64]),
       st.sampled_from(["linear:0.75:0.25", "upsample-end:0.2:0.9:0.3", "follow-lr:0.8:0.2", "stepped:3:0.9:0.5",
                        "linear:0:0.875"]), st.sampled_from([8, 16, 32]))
def test_finetune_ramp_target_epochs_are_exact(target_steps, epochs, shape, batch):
    plan = R.finetune_ramp(target_steps, epochs, R.shape_points(shape))
    target_seqs = int(target_steps * batch)
    m = Mixture(plan.schedule, {"target": target_seqs, "generic": 10_000}, batch, plan.steps)
    assert m.consumed(plan.steps)["target"] == target_seqs * epochs
    assert m.epochs_consumed()["target"] == epochs
    # the phase length is the ceiling of T * E / mean(1 - rho) (trapezoids over the shape's points)
    pts = R.shape_points(shape)
    mean = sum((t1 - t0) * ((1 - r0) + (1 - r1)) / 2 for (t0, r0), (t1, r1) in zip(pts, pts[1:]))
    assert plan.steps == math.ceil(target_steps * epochs / mean - 1e-9)


def test_linear_ramp_counts_by_hand():
    # rho 0.75 -> 0.25 over 128 steps of 16: the target integral after step s is 16 * (0.25 s + s^2 / 512)
    plan = R.finetune_ramp(1, 64, R.shape_points("linear:0.75:0.25"))
    assert plan.steps == 128  # mean target weight 1/2, as rho = 0.5
    m = Mixture(plan.schedule, {"target": 16, "generic": 1000}, 16, plan.steps)
    assert [m.counts(s)["target"] for s in (0, 1, 2, 64, 127)] == [4, 4, 4, 8, 12]
    assert m.consumed(64)["target"] == round(16 * (0.25 * 64 + 64**2 / 512))  # 384
    assert m.consumed(128) == {"target": 1024, "generic": 1024}


def test_midtrain_ramp_holds_gamma_like_two_stage():
    plan = R.midtrain_ramp(1024, 1 / 32, R.shape_points("upsample-end:0.125:1:0"))
    m = Mixture(plan.schedule, {"target": 16, "generic": 100_000}, 16, 1024)
    assert m.consumed(1024)["target"] == 512  # 1 batch x 32 epochs
    assert m.consumed(896)["target"] == 0  # nothing before the last eighth
    assert m.counts(1023)["target"] == 8  # peak weight 2 * gamma / 0.125 = 0.5


def test_a_ramp_for_another_length_is_refused():
    plan = R.midtrain_ramp(100, 0.1, R.shape_points("linear:0.9:0.5"))
    with pytest.raises(ScheduleError, match="covers 100 steps but the mixture 90"):
        Mixture(plan.schedule, {"target": 10, "generic": 100}, 8, 90)
