"""Coverage of the multipliers' intervals, simulated with the demo's design from a known truth.

Truth: reference losses fall log-linearly, 0.29 nats per doubling of unique target data
(the demo's measured fine-tuning slope); each arm has a known multiplier m, i.e. its mean
loss is the baseline's minus 0.29 log2 m. Noise as measured in the demo: a per-seed effect
shared by every run of that seed (sd 0.065: which target data was drawn, the shared prefix)
and per-run noise (sd 0.035), plus the sampling noise of each held-out half (sd 0.01). Each
configuration is run at 2 LRs, the second 0.04 nats worse; the LR of every arm and every
reference point is chosen on validation losses, the best arm too, and the reported numbers
come from the test halves, as in the demo. A nominal 90 % interval must cover the truth of
the arm it reports in 85-95 % of 500 simulated studies.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from replaytune.study import paired

SLOPE = 0.29
LEVEL = 0.9
STUDIES = 500
FT_ARMS = {"rho0.5": 1.2, "rho0.75": 1.45}
MT_ARMS = {"rho0.25": 0.9, "rho0.5": 1.0, "rho0.75": 0.8, "rho0.875": 0.6}


def simulate(rng, arms, *, seeds=4, xs=(0.5, 1.0, 2.0), lrs=2, seed_sd=0.065, run_sd=0.035, half_sd=0.01,
             lr_gap=0.04) -> paired.Design:
    xs = np.asarray(xs)
    shared = rng.normal(0, seed_sd, seeds)

    def chosen(mean):  # one configuration at every LR and seed; the LR with the best mean validation loss
        run = mean + shared + lr_gap * np.arange(lrs)[:, None] + rng.normal(0, run_sd, (lrs, seeds))
        val, test = run + rng.normal(0, half_sd, run.shape), run + rng.normal(0, half_sd, run.shape)
        k = int(np.argmin(val.mean(axis=1)))
        return val[k], test[k]

    ref = np.stack([chosen(5.0 - SLOPE * math.log2(x))[1] for x in xs], axis=1)
    picked = {n: chosen(5.0 - SLOPE * math.log2(m)) for n, m in arms.items()}
    return paired.Design(xs, ref, ref[:, list(xs).index(1.0)], 1.0, {n: t for n, (_, t) in picked.items()},
                         {n: v for n, (v, _) in picked.items()}, tuple(range(seeds)))


def covered(iv, truth) -> bool:
    return iv is not None and iv[0] <= truth <= iv[1]


@pytest.mark.parametrize("arms", [FT_ARMS, MT_ARMS], ids=["finetune-2-arms", "midtrain-4-arms"])
def test_paired_interval_covers_the_truth_at_the_nominal_level(arms):
    rng = np.random.default_rng(20261206)
    best, each = 0, {n: 0 for n in arms}
    for _ in range(STUDIES):
        r = paired.analyse(simulate(rng, arms), LEVEL, kind="log-linear")
        best += covered(r["interval"], arms[r["best"]])
        for n, m in arms.items():
            each[n] += covered(r["arms"][n]["interval"], m)
    assert abs(best / STUDIES - LEVEL) <= 0.05, best / STUDIES
    for n in arms:
        assert abs(each[n] / STUDIES - LEVEL) <= 0.05, (n, each[n] / STUDIES)


def unpaired_percentile_bootstrap(d: paired.Design, rng, resamples=400) -> dict[str, list[float]]:
    """The demo's former interval: every run's seeds and every reference x resampled on their own
    (the baseline twice: as the comparator and as the x = 1 point), percentile interval."""
    S, X = d.ref.shape
    u = np.log2(d.xs)
    uc = u - u.mean()
    pick = lambda v: np.take_along_axis(np.broadcast_to(v, (resamples, S)), rng.integers(0, S, (resamples, S)), 1).mean(1)  # noqa: E731
    ref = np.stack([pick(d.ref[:, i]) for i in range(X)], axis=1)
    b = -(ref - ref.mean(1, keepdims=True)) @ uc / np.dot(uc, uc)
    base = pick(d.base)
    out = {}
    for n, losses in d.arms.items():
        theta = (base - pick(losses)) / b
        lo, hi = np.quantile(theta, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
        out[n] = [2 ** lo, 2 ** hi]
    return out


@pytest.mark.parametrize("seeds, seed_sd, wrong", [(4, 0.065, "too wide"), (2, 0.02, "too narrow")])
def test_the_coverage_check_fails_an_unpaired_bootstrap(seeds, seed_sd, wrong):
    # the same kind of studies through the former interval, which ignores the pairing: with a
    # large shared seed effect it is too wide (measured 97 %), with a small one and 2 seeds too
    # narrow (76 %); either way the check above fails it, while the paired interval passes
    rng = np.random.default_rng(7)
    old = new = 0
    for _ in range(STUDIES):
        d = simulate(rng, FT_ARMS, seeds=seeds, seed_sd=seed_sd)
        old += covered(unpaired_percentile_bootstrap(d, rng)["rho0.75"], FT_ARMS["rho0.75"])
        new += covered(paired.analyse(d, LEVEL, kind="log-linear")["arms"]["rho0.75"]["interval"], FT_ARMS["rho0.75"])
    assert abs(old / STUDIES - LEVEL) > 0.05, (wrong, old / STUDIES)
    assert (old / STUDIES > LEVEL) == (wrong == "too wide")
    assert abs(new / STUDIES - LEVEL) <= 0.05, new / STUDIES
