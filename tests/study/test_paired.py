"""Paired multipliers: exact values on noiseless designs, range flags, the fit's kind, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from replaytune.study import paired
from replaytune.study.efficiency import FitError

XS = np.array([0.5, 1.0, 2.0])


def design(mults, shared=(0.1, -0.05, 0.0, 0.2), slope=0.29, curve=None):
    shared = np.asarray(shared)
    f = curve or (lambda x: 5.0 - slope * np.log2(x))
    ref = f(XS)[None, :] + shared[:, None]
    arms = {n: f(np.array([m]))[0] + shared for n, m in mults.items()}
    return paired.Design(XS, ref, ref[:, 1], 1.0, arms, None, tuple(range(len(shared))))


def test_noiseless_log_linear_design_gives_the_true_multipliers_and_a_zero_width_interval():
    r = paired.analyse(design({"a": 1.5, "b": 1.2}), 0.9, kind="log-linear")
    assert r["kind"] == "log-linear" and r["slope_per_doubling"] == pytest.approx(0.29)
    assert r["best"] == "a" and r["best_of"] == 2 and r["seeds"] == 4 and r["paired"] is True
    assert r["multiplier"] == pytest.approx(1.5)
    assert r["interval"] == pytest.approx([1.5, 1.5])  # the seed effect is shared: pairing cancels it
    assert r["arms"]["b"]["multiplier"] == pytest.approx(1.2)
    assert r["bracket_multiplier"] == pytest.approx(1.5)  # straight line: interpolation agrees
    assert r["interpolated"] is True and r["interval_method"] == paired.INTERVAL_METHOD


def test_effective_data_beyond_the_measured_range_is_flagged_and_has_no_bracket():
    r = paired.analyse(design({"far": 3.0}), 0.9, kind="log-linear")
    assert r["multiplier"] == pytest.approx(3.0)
    assert r["interpolated"] is False and r["bracket_multiplier"] is None


def test_an_arm_below_the_largest_reference_point_gets_a_lower_bound_with_its_seed_count():
    r = paired.analyse(design({"far": 3.0, "near": 1.5}), 0.9, kind="log-linear")
    assert r["arms"]["far"]["lower_bound"] == pytest.approx(2.0)  # x_max / the baseline's x
    assert r["arms"]["far"]["seeds_past_range"] == 4 and r["lower_bound"] == pytest.approx(2.0)
    assert r["arms"]["near"]["lower_bound"] is None and r["arms"]["near"]["seeds_past_range"] == 0
    # a flat curve (the fit finds no finite multiplier) still gives the bound: the data say it
    flat = design({"far": 3.0}, curve=lambda x: 5.0 - 0.01 * np.log2(x))
    arms = {"far": flat.arms["far"] - 0.5}
    r = paired.analyse(paired.Design(flat.xs, flat.ref, flat.base, 1.0, arms, None, flat.seeds), 0.9, kind="log-linear")
    assert r["arms"]["far"]["lower_bound"] == pytest.approx(2.0) and r["seeds_past_range"] == 4


def test_a_seed_that_disagrees_widens_the_interval_around_the_point_estimate():
    d = design({"a": 1.5})
    arms = {"a": d.arms["a"] + np.array([0.0, 0.05, -0.03, 0.0])}
    r = paired.analyse(paired.Design(d.xs, d.ref, d.base, 1.0, arms, None, d.seeds), 0.9, kind="log-linear")
    gaps = d.base - arms["a"]
    theta = gaps.mean() / 0.29
    assert r["multiplier"] == pytest.approx(2 ** theta)
    loo = np.array([(gaps.sum() - g) / 3 / 0.29 for g in gaps])
    se = math.sqrt(3 / 4 * np.sum((loo - loo.mean()) ** 2))
    q = paired.t_quantile(0.9, 3)
    assert r["interval"] == pytest.approx([2 ** (theta - q * se), 2 ** (theta + q * se)])


def test_an_identified_curve_is_fitted_as_the_paper_does():
    A, B, C = 1.0, 0.5, 2.0
    r = paired.analyse(design({"a": 1.5}, curve=lambda x: A / np.asarray(x) ** B + C,
                              shared=(0.0, 0.0, 0.0, 0.0)), 0.9)
    assert r["kind"] == "curve"
    assert r["fit"]["C"] == pytest.approx(C, abs=1e-4)
    assert r["multiplier"] == pytest.approx(1.5, rel=1e-4)


def test_a_degenerate_fit_is_reported_as_log_linear():
    r = paired.analyse(design({"a": 1.5}), 0.9)  # a straight line in log x: C is not identified
    assert r["kind"] == "log-linear"


def test_too_few_seeds_or_a_rising_curve_is_refused():
    with pytest.raises(FitError, match="at least 2 seeds"):
        paired.analyse(design({"a": 1.5}, shared=(0.0,)), 0.9)
    with pytest.raises(FitError, match="does not fall with x"):
        paired.analyse(design({"a": 1.5}, slope=-0.1), 0.9, kind="log-linear")
