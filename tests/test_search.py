"""The replay-fraction search on synthetic loss curves: cost, ties, late overtakes, the forgetting budget."""

from __future__ import annotations

import json

import pytest

from replaytune.search import Candidate, Outcome, rung_step, successive_halving


def _cands(rhos, base=32):
    return [Candidate(r, None, round(base / (1 - r))) for r in rhos]


def _runner(curves, generic=None, calls=None):
    """curves[rho](fraction) -> target loss; generic[rho] -> generic loss."""
    def run_to(c, step):
        if calls is not None:
            calls.append((c.rho, step))
        f = step / c.steps
        return Outcome(curves[c.rho](f), None if generic is None else generic[c.rho])
    return run_to


def test_best_is_found_at_a_fraction_of_the_grid():
    rhos = [0.0, 0.25, 0.5, 0.75, 0.875]
    final = {0.0: 5.06, 0.25: 5.0, 0.5: 4.96, 0.75: 4.91, 0.875: 4.95}
    curves = {r: (lambda f, r=r: final[r] + 0.5 * (1 - f)) for r in rhos}  # same shape, ranking fixed early
    calls = []
    res = successive_halving(_cands(rhos), _runner(curves, calls=calls))
    assert res.chosen.candidate.rho == 0.75
    assert res.steps_grid == 32 + 43 + 64 + 128 + 256
    assert res.steps_computed < 0.6 * res.steps_grid
    # every candidate first ran to a quarter of its own run: the same target epochs for all
    assert [s for r, s in calls[:5]] == [rung_step(c, 0.125) for c in _cands(rhos)]
    assert res.steps_computed <= 0.45 * res.steps_grid
    # survivors continued from where they stopped: no candidate ran to a step twice
    assert len(calls) == len(set(calls))
    d = res.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert set(d) >= {"chosen_rho", "chosen_lr", "candidates", "steps_computed", "steps_grid"}
    assert {"rho", "lr", "target_loss", "generic_loss", "steps_run", "eliminated_at"} <= set(d["candidates"][0])
    assert sum(1 for c in d["candidates"] if c["eliminated_at"] is None) == 1 + sum(
        1 for c in d["candidates"] if c["eliminated_at"] is None and c["rho"] != 0.75)


def test_ties_are_broken_by_candidate_order_and_all_equal_costs_little():
    curves = {r: (lambda f: 5.0) for r in (0.0, 0.5, 0.75)}
    res = successive_halving(_cands([0.0, 0.5, 0.75]), _runner(curves))
    assert res.chosen.candidate.rho == 0.0  # all equal: the first candidate, deterministically
    assert res.steps_computed < res.steps_grid


def test_a_late_overtaker_is_lost_without_margin_and_kept_with_it():
    # rho 0.5 starts worse (slower on the target) but ends better: the documented failure mode
    curves = {0.0: lambda f: 5.2 - 0.2 * f, 0.5: lambda f: 5.25 - 0.35 * f}
    plain = successive_halving(_cands([0.0, 0.5]), _runner(curves))
    assert plain.chosen.candidate.rho == 0.0 and plain.entries[1].eliminated_at == 0.125
    kept = successive_halving(_cands([0.0, 0.5]), _runner(curves), margin=0.1)
    assert kept.chosen.candidate.rho == 0.0  # of 2, ceil(2 / 2) = 1 goes on: the margin cannot widen that
    three = _cands([0.0, 0.5, 0.75])
    slow = {**curves, 0.75: lambda f: 5.5}
    assert successive_halving(three, _runner(slow), eta=3).chosen.candidate.rho == 0.0  # a third goes on: lost
    kept = successive_halving(three, _runner(slow), eta=2, fractions=(0.25, 1.0), margin=0.1)
    assert kept.chosen.candidate.rho == 0.5  # ceil(3 / 2) = 2 go on, both within the margin: the overtake counts


def test_forgetting_budget_excludes_the_best_target_loss():
    curves = {0.0: lambda f: 4.8, 0.5: lambda f: 4.9, 0.75: lambda f: 5.0}
    generic = {0.0: 3.9, 0.5: 3.35, 0.75: 3.2}
    res = successive_halving(_cands([0.0, 0.5, 0.75]), _runner(curves, generic), base_generic=3.2, max_forgetting=0.2)
    assert res.chosen.candidate.rho == 0.5  # rho 0 forgets 0.7 nats: out, whatever its target loss
    assert res.entries[0].eliminated_at == 0.125 and "rose more than 0.2" in res.entries[0].reason
    none_ok = successive_halving(_cands([0.0, 0.5]), _runner(curves, generic), base_generic=2.0, max_forgetting=0.1)
    assert none_ok.chosen.candidate.rho == 0.5 and "least-forgetting" in none_ok.note


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="end at 1"):
        successive_halving(_cands([0.0]), _runner({0.0: lambda f: 1.0}), fractions=(0.5,))
    with pytest.raises(ValueError, match="base model"):
        successive_halving(_cands([0.0]), _runner({0.0: lambda f: 1.0}), max_forgetting=0.1)
