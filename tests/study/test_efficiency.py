"""Reference fit, inversion, multipliers, bootstrap, best-run choice and the `efficiency` CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from replaytune import cli
from replaytune.study import efficiency as eff

A, B, C = 0.8, 0.3, 2.5
PAPER_XS = [1.0, 2.0, 4.0, 8.0, 16.0]


def losses_at(xs, a=A, b=B, c=C):
    return [a / x**b + c for x in xs]


# -- fit -----------------------------------------------------------------------------------------


def test_fit_recovers_known_curve_exactly():
    fit = eff.fit_reference(PAPER_XS, losses_at(PAPER_XS))
    assert (fit.A, fit.B, fit.C) == pytest.approx((A, B, C), rel=1e-7)
    assert fit.method == "paper"
    assert fit.rmse < 1e-10
    assert fit.xs == tuple(PAPER_XS)


def test_fit_recovers_curve_when_x_is_in_tokens():
    # x in tokens (1e5..1.6e6): the unscaled paper guess would land on B ~ 25; scaling by min(x) fixes it.
    xs = [1e5 * 2**k for k in range(5)]
    fit = eff.fit_reference(xs, losses_at(xs, 60.0, 0.3, 3.0))
    assert (fit.A, fit.B, fit.C) == pytest.approx((60.0, 0.3, 3.0), rel=1e-6)


def test_fit_with_noise_stays_close():
    rng = np.random.default_rng(0)
    ys = np.array(losses_at(PAPER_XS)) + rng.normal(0, 0.002, len(PAPER_XS))
    fit = eff.fit_reference(PAPER_XS, ys)
    assert fit.A == pytest.approx(A, rel=0.1)
    assert fit.B == pytest.approx(B, rel=0.1)
    assert fit.C == pytest.approx(C, abs=0.05)


def test_fit_uses_all_seed_losses():
    xs = PAPER_XS + PAPER_XS
    ys = [v + 0.01 for v in losses_at(PAPER_XS)] + [v - 0.01 for v in losses_at(PAPER_XS)]
    fit = eff.fit_reference(xs, ys)  # the +-0.01 pairs average out to the true curve
    assert (fit.A, fit.B, fit.C) == pytest.approx((A, B, C), rel=1e-5)


def test_bounded_refit_when_unbounded_fit_is_not_a_falling_curve():
    # Near log-linear data: the unbounded fit runs to A < 0, B < 0 (no asymptote).
    xs = [8.0, 16.0, 32.0, 64.0, 128.0]
    ys = [5.78389209, 5.49724397, 5.27428526, 5.07072741, 4.86479371]
    fit = eff.fit_reference(xs, ys)
    assert fit.method == "bounded"
    assert fit.A > 0 and fit.B > 0 and fit.C >= 0
    assert fit.rmse < 0.02


@pytest.mark.parametrize(
    "xs, ys, match",
    [
        ([1.0, 2.0], [3.0, 2.9], "at least 3 distinct x values"),
        ([1.0, 2.0, 2.0], [3.0, 2.9, 2.8], "at least 3 distinct x values to fit A, B and C, got 2"),
        ([1.0, 0.0, 4.0], [3.0, 2.9, 2.8], r"reference\[1\]: x must be a finite number > 0"),
        ([1.0, 2.0, 4.0], [3.0, float("nan"), 2.8], r"reference\[1\]: loss must be a finite number"),
        ([1.0, 2.0, 4.0], [3.0, 2.9], "3 x values but 2 losses"),
        ([1.0, 2.0, 4.0, 8.0], [2.0, 2.2, 2.4, 2.6], "not a curve falling with x"),
    ],
)
def test_fit_refuses_bad_input(xs, ys, match):
    with pytest.raises(eff.FitError, match=match):
        eff.fit_reference(xs, ys)


# -- inversion and multipliers ----------------------------------------------------------------------


@pytest.mark.parametrize("x", [0.25, 1.0, 3.0, 16.0, 1000.0])
def test_effective_data_inverts_the_curve(x):
    fit = eff.Fit(A, B, C)
    assert eff.effective_data(fit, A / x**B + C) == pytest.approx(x, rel=1e-12)


@pytest.mark.parametrize("loss", [C, C - 0.1, 0.0, float("nan")])
def test_loss_at_or_below_c_has_no_effective_data(loss):
    assert eff.effective_data(eff.Fit(A, B, C), loss) is None


def test_multipliers_are_ratios_to_the_baseline():
    fit = eff.Fit(A, B, C)
    runs = {"base": A / 2**B + C, "four": A / 8**B + C, "below": C - 0.01, "seeds": [A / 4**B + C - 0.001, A / 4**B + C + 0.001]}
    out = eff.multipliers(fit, runs, "base")
    assert out["base"] == {"loss": runs["base"], "effective_x": pytest.approx(2.0), "multiplier": 1.0}
    assert out["four"]["multiplier"] == pytest.approx(4.0, rel=1e-12)
    assert out["below"] == {"loss": C - 0.01, "effective_x": None, "multiplier": None}
    assert out["seeds"]["loss"] == pytest.approx(A / 4**B + C)
    assert out["seeds"]["multiplier"] == pytest.approx(2.0, rel=1e-9)


def test_baseline_below_c_leaves_every_multiplier_undefined():
    out = eff.multipliers(eff.Fit(A, B, C), {"base": C - 0.1, "m": A / 2**B + C}, "base")
    assert out["m"]["effective_x"] == pytest.approx(2.0)
    assert out["m"]["multiplier"] is None and out["base"]["multiplier"] is None


def test_multipliers_unknown_baseline():
    with pytest.raises(eff.FitError, match="baseline 'nope' is not one of the runs \\(a\\)"):
        eff.multipliers(eff.Fit(A, B, C), {"a": 3.0}, "nope")


# -- bootstrap --------------------------------------------------------------------------------------


def noisy_reference(seed=1, sd=0.01):
    rng = np.random.default_rng(seed)
    xs = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    return xs, list(np.array(losses_at(xs)) + rng.normal(0, sd, len(xs)))


def test_bootstrap_interval_contains_point_estimate_and_counts_failures():
    xs, ys = noisy_reference()
    runs = {"base": A / 2**B + C, "m": A / 6**B + C}
    point = eff.multipliers(eff.fit_reference(xs, ys), runs, "base")["m"]["multiplier"]
    bs = eff.bootstrap(xs, ys, runs, "base", resamples=300, seed=0)
    lo, hi = bs.intervals["m"]["multiplier"]
    assert lo < point < hi
    assert bs.intervals["base"]["multiplier"] == [1.0, 1.0]
    assert bs.mode == "points"
    # about 6% of 6-point resamples have < 3 distinct x (counted as failed refits)
    assert 0 < bs.failed < 60
    again = eff.bootstrap(xs, ys, runs, "base", resamples=300, seed=0)
    assert again == bs  # same seed, same intervals
    other = eff.bootstrap(xs, ys, runs, "base", resamples=300, seed=1)
    assert other.intervals["m"] != bs.intervals["m"]


def test_bootstrap_over_seeds_keeps_every_x():
    xs = PAPER_XS * 3
    rng = np.random.default_rng(2)
    ys = list(np.array(losses_at(xs)) + rng.normal(0, 0.005, len(xs)))
    runs = {"b": A / 2**B + C, "m": [A / 4**B + C, A / 4**B + C + 0.004]}
    point = eff.multipliers(eff.fit_reference(xs, ys), runs, "b")["m"]["multiplier"]
    bs = eff.bootstrap(xs, ys, runs, "b", resamples=200)
    assert bs.mode == "seeds"
    assert bs.failed == 0  # every resample keeps all 5 distinct x
    lo, hi = bs.intervals["m"]["multiplier"]
    assert lo < point < hi


def test_bootstrap_unbounded_upper_end_near_c():
    xs, ys = noisy_reference(sd=0.01)
    fit = eff.fit_reference(xs, ys)
    runs = {"base": A / 2**B + C, "near": fit.C + 0.002}  # some refits put C above this loss
    bs = eff.bootstrap(xs, ys, runs, "base", resamples=300, seed=0)
    assert bs.intervals["near"]["below_C"] > 0
    assert bs.intervals["near"]["multiplier"][1] is None  # no finite upper end
    assert bs.intervals["near"]["multiplier"][0] > 1


def test_bootstrap_with_three_points_gives_no_interval():
    bs = eff.bootstrap([1.0, 2.0, 4.0], losses_at([1.0, 2.0, 4.0]), {"b": 3.0}, "b", resamples=50)
    assert bs.intervals["b"]["multiplier"] is None
    assert "need >= 4" in bs.note


# -- choosing the paper's comparisons -------------------------------------------------------------


def run(name, setting, rho, target, *, alpha=None, lr=1e-3, seed=0, generic=4.0):
    return {"name": name, "setting": setting, "rho": rho, "alpha": alpha, "lr": lr, "seed": seed,
            "target_loss": target, "generic_loss": generic, "run_dir": None, "x": None}


RUNS = [
    run("ft0-a", "finetune", 0.0, 3.20, lr=1e-3),
    run("ft0-b", "finetune", 0.0, 3.10, lr=3e-4),  # best LR of the no-replay baseline
    run("ft5-s0", "finetune", 0.5, 3.00, seed=0),
    run("ft5-s1", "finetune", 0.5, 3.04, seed=1),  # mean 3.02
    run("ft75", "finetune", 0.75, 3.01),  # single seed beats the 0.5 mean
    run("mt00", "midtrain", 0.0, 3.30, alpha=1.0),
    run("mt50", "midtrain", 0.5, 3.25, alpha=1.0),
    run("mt0q", "midtrain", 0.0, 3.28, alpha=0.25),
    run("mt5q", "midtrain", 0.5, 3.20, alpha=0.25),
]


def test_best_runs_follow_the_paper():
    best = eff.best_runs(RUNS)
    ft = best["finetune_replay"]
    assert ft["baseline"]["name"] == "ft0-b" and ft["method"]["name"] == "ft75" and ft["candidates"] == 2
    seeds = [g for g in eff.group_runs(RUNS) if g["name"] == "ft5-s0"][0]
    assert seeds["target_loss"] == pytest.approx(3.02) and seeds["target_std"] == pytest.approx(math.sqrt(0.0008))
    assert best["midtrain_replay"]["method"]["name"] == "mt50"
    assert best["midtrain_replay"]["baseline"]["name"] == "mt00"
    assert best["full_schedule"]["method"]["name"] == "mt5q" and best["full_schedule"]["candidates"] == 3


def test_best_runs_missing_settings_and_losing_replay():
    worse = [run("b", "midtrain", 0.0, 3.0, alpha=1.0), run("m", "midtrain", 0.5, 3.1, alpha=1.0)]
    best = eff.best_runs(worse)
    assert best["finetune_replay"] is None
    assert best["midtrain_replay"]["method"]["name"] == "m"  # replay kept even though it lost: multiplier < 1
    fit = eff.Fit(1.0, 0.5, 2.0)
    mult = {k: (v["multiplier"] if v else None) for k, v in eff.compare_best(fit, worse).items()}
    assert mult["midtrain_replay"] == pytest.approx((1.0 / 1.1) ** 2 / (1.0 / 1.0) ** 2)
    assert mult["finetune_replay"] is None


def test_compare_best_with_bootstrap():
    xs, ys = noisy_reference()
    fit = eff.fit_reference(xs, ys)
    out = eff.compare_best(fit, RUNS, resamples=100, seed=0)
    ft = out["finetune_replay"]
    expect = eff.effective_data(fit, 3.01) / eff.effective_data(fit, 3.10)
    assert ft["multiplier"] == pytest.approx(expect)
    lo, hi = ft["interval"]
    assert lo <= ft["multiplier"] <= hi
    assert ft["bootstrap"]["resamples"] == 100


# -- CLI ----------------------------------------------------------------------------------------------


def write(tmp_path, data, name="eff.json"):
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(p)


GOOD = {
    "reference": [{"x": x, "loss": v} for x, v in zip(PAPER_XS, losses_at(PAPER_XS))],
    "runs": {"ft": A / 2**B + C, "replay": A / 6**B + C, "magic": C - 0.2},
    "baseline": "ft",
}


def test_cli_json_output(tmp_path, capsys):
    assert cli.main(["efficiency", write(tmp_path, GOOD), "--json", "--bootstrap", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"fit", "baseline", "runs"}
    assert (out["fit"]["A"], out["fit"]["B"], out["fit"]["C"]) == pytest.approx((A, B, C), rel=1e-6)
    assert out["runs"]["replay"]["multiplier"] == pytest.approx(3.0, rel=1e-6)
    assert out["runs"]["ft"]["effective_x"] == pytest.approx(2.0, rel=1e-6)
    assert out["runs"]["magic"] == {"loss": C - 0.2, "effective_x": None, "multiplier": None}


def test_cli_json_with_intervals(tmp_path, capsys):
    assert cli.main(["efficiency", write(tmp_path, GOOD), "--json", "--bootstrap", "50", "--seed", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["bootstrap"]["resamples"] == 50 and out["bootstrap"]["seed"] == 3
    assert set(out["runs"]["replay"]) == {"loss", "effective_x", "multiplier", "effective_x_interval",
                                          "multiplier_interval", "below_C"}
    assert out["runs"]["magic"]["below_C"] == 50 - out["bootstrap"]["failed"]


def test_cli_table(tmp_path, capsys):
    assert cli.main(["efficiency", write(tmp_path, GOOD), "--bootstrap", "0"]) == 0
    text = capsys.readouterr().out
    assert "A = 0.8" in text and "B = 0.3" in text and "C = 2.5" in text
    assert "3.00x" in text and "(baseline)" in text
    assert "no finite effective data" in text


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        ("{not json", "not valid JSON (line 1, column 2"),
        ({"reference": GOOD["reference"], "runs": GOOD["runs"]}, "'baseline' is missing"),
        ({**GOOD, "baseline": "other"}, "'baseline' 'other' is not one of the runs (ft, replay, magic)"),
        ({**GOOD, "reference": GOOD["reference"][:2]}, "'reference' needs at least 3 distinct x values to fit A, B and C, got 2"),
        ({**GOOD, "reference": [{"x": -1, "loss": 3.0}] + GOOD["reference"]}, "reference[0].x must be > 0"),
        ({**GOOD, "runs": {"ft": "low"}}, "runs['ft'] must be a finite number, got 'low'"),
        ({**GOOD, "reference": [{"x": x, "loss": 2.0 + 0.1 * x} for x in PAPER_XS]}, "not a curve falling with x"),
    ],
)
def test_cli_bad_input_exits_2_naming_file_and_field(tmp_path, capsys, content, message):
    path = str(tmp_path / "missing.json") if content is None else write(tmp_path, content)
    assert cli.main(["efficiency", path, "--json"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"replaytune efficiency: error: {path}: ")
    assert message in err
    assert len(err.splitlines()) == 1


def test_pooled_std_weights_groups_by_degrees_of_freedom():
    groups = [{"target_losses": [1.0, 3.0]}, {"target_losses": [2.0, 2.0, 2.0]}, {"target_losses": [5.0]}]
    # deviations: 1 + 1 over 1 dof, 0 over 2 dof -> sqrt(2 / 3); the mean of stds would be sqrt(2) / 2
    assert eff.pooled_std(groups) == pytest.approx(math.sqrt(2 / 3))
    assert eff.pooled_std([{"target_losses": [1.0]}]) is None


def test_best_per_keeps_lowest_loss_per_key_in_first_seen_order():
    groups = [{"rho": 0.5, "lr": 1, "target_loss": 3.0}, {"rho": 0.0, "lr": 1, "target_loss": 2.0},
              {"rho": 0.5, "lr": 2, "target_loss": 2.5}, {"rho": 0.0, "lr": 2, "target_loss": 2.0}]
    best = eff.best_per(groups, lambda g: g["rho"])
    assert list(best) == [0.5, 0.0]
    assert best[0.5]["lr"] == 2 and best[0.0]["lr"] == 1  # a tie keeps the first seen


# -- reference families ----------------------------------------------------------------------------

REF_XS = [0.5, 1.0, 2.0, 4.0]


def _row(name, setting, rho, loss, *, x=1.0, alpha=None, seed=0, lr=3e-4, reference=False):
    r = {"name": name, "setting": setting, "rho": rho, "alpha": alpha, "lr": lr, "x": x, "seed": seed,
         "target_loss": loss, "generic_loss": 3.0}
    if reference:
        r["reference"] = True
    return r


def baseline_family_runs(ft_method_at=2.0, mt_method_at=0.5, noise=0.004, flat_ft=False):
    """Fine-tuning curve L = 0.8/x^0.3 + 2.5, mid-training curve L = 0.5/x^0.5 + 3.0, two seeds per
    point (+-noise); the replay methods sit exactly on their curve at ``*_method_at`` batches."""
    ft = (lambda x: 3.0) if flat_ft else (lambda x: 0.8 / x**0.3 + 2.5)
    mt = lambda x: 0.5 / x**0.5 + 3.0  # noqa: E731
    rows = []
    for x in REF_XS:
        for seed, d in ((0, noise), (1, -noise)):
            ref = x != 1.0  # the baselines themselves are the points at x = 1
            tag = f"x{x:g}_s{seed}"
            rows.append(_row(f"ft0_{tag}", "finetune", 0.0, ft(x) + d, x=x, seed=seed, reference=ref))
            rows.append(_row(f"mt0_{tag}", "midtrain", 0.0, mt(x) + d, x=x, alpha=1.0, seed=seed, reference=ref))
    for seed, d in ((0, noise), (1, -noise)):
        rows.append(_row(f"ft5_s{seed}", "finetune", 0.5, ft(ft_method_at) + d, seed=seed))
        rows.append(_row(f"mt5_s{seed}", "midtrain", 0.5, mt(mt_method_at) + d, alpha=1.0, seed=seed))
    return rows


def test_baseline_family_reads_each_comparison_off_its_own_curve():
    rows = baseline_family_runs()
    out, curves = eff.compare(rows, "baseline", resamples=300, level=0.9)
    assert set(curves) == {"finetune", "midtrain"}
    assert sorted(curves["finetune"]["xs"]) == sorted(REF_XS * 2)  # every seed a point, the baseline included
    ft, mt = out["finetune_replay"], out["midtrain_replay"]
    assert ft["reference"] == "finetune" and mt["reference"] == "midtrain"
    # the methods and baselines are the x = 1 runs, never reference points at other x
    assert ft["method"]["name"] == "ft5_s0" and ft["baseline"]["name"] == "ft0_x1_s0"
    assert ft["multiplier"] == pytest.approx(2.0, rel=0.05)  # on the curve at 2 batches: worth 2x
    assert mt["multiplier"] == pytest.approx(0.5, rel=0.05)  # replay hurt: honestly below 1
    lo, hi = ft["interval"]
    assert lo <= ft["multiplier"] <= hi and lo > 1.0  # an effect far beyond the noise excludes 1
    lo, hi = mt["interval"]
    assert lo <= mt["multiplier"] <= hi and hi < 1.0
    assert out["full_schedule"]["reference"] == "midtrain"


def test_flat_reference_curve_gives_no_multiplier_and_says_why():
    rows = baseline_family_runs(flat_ft=True, noise=0.02)
    out, curves = eff.compare(rows, "baseline", resamples=100)
    assert "fit" not in curves["finetune"]
    assert "does not fall beyond its seed noise" in curves["finetune"]["error"]
    ft = out["finetune_replay"]
    assert ft["multiplier"] is None and ft["interval"] is None and "seed noise" in ft["error"]
    assert out["midtrain_replay"]["multiplier"] is not None  # the other curve still works


def test_falls_beyond_noise_needs_a_drop_beyond_two_standard_errors():
    xs = [1, 1, 2, 2, 4, 4]
    assert eff.falls_beyond_noise(xs, [3.0, 3.1, 2.9, 3.0, 2.98, 3.02]) is not None  # drop 0.05, se ~0.05
    assert eff.falls_beyond_noise(xs, [3.5, 3.52, 3.2, 3.22, 3.0, 3.02]) is None
    assert eff.falls_beyond_noise([1, 2, 4], [3.0, 3.0, 3.0]) is None  # one seed: noise unmeasured, no verdict


def test_uniform_family_uses_the_uniform_reference_runs():
    rows = [r for r in baseline_family_runs() if not r.get("reference")]
    rows += [_row(f"ref{x:g}", "reference", None, 0.8 / x**0.3 + 2.5, x=x) for x in REF_XS]
    out, curves = eff.compare(rows, "uniform")
    assert list(curves) == ["uniform"] and curves["uniform"]["xs"] == REF_XS
    assert out["finetune_replay"]["reference"] == "uniform"
    assert out["finetune_replay"]["multiplier"] == pytest.approx(2.0, rel=0.05)
    with pytest.raises(eff.FitError, match="reference family"):
        eff.compare(rows, "nope")


def test_reference_points_never_stand_in_for_a_method_or_its_baseline(tmp_path):
    from replaytune.study.results import Results

    rows = baseline_family_runs()
    groups = eff.group_runs(rows)
    assert {g["x"] for g in groups if g["reference"]} == {0.5, 2.0, 4.0}
    (tmp_path / "results.json").write_text(json.dumps({"runs": rows, "efficiency": {"reference": "baseline"}}))
    res = Results(tmp_path, resamples=50, seed=0)
    assert res.family == "baseline" and set(res.curves) == {"finetune", "midtrain"}
    # the x = 4 reference point has the lowest loss of rho = 0, yet the baseline cell is the x = 1 run
    assert res.best_lr("finetune")[(0.0, 1.0)]["x"] == 1.0
    assert res.best_lr("midtrain")[(0.0, 1.0)]["x"] == 1.0
