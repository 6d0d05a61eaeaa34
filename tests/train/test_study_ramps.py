"""Ramp arms in the study: equal target data and total steps, prefix sharing, and the paired comparison."""

from __future__ import annotations

import json
import math

import pytest

from .helpers import TINY
from replaytune.study import ramps
from replaytune.study import runs as study
from replaytune.train.plan import RunPlan, open_stores


def _study(stores, **kw):
    spec = {
        "target_store": str(stores["target"]), "generic_store": str(stores["generic"]),
        "model": {"preset": "tiny", "overrides": dict(TINY)}, "seq_len": 16, "batch_size": 8, "steps": 64,
        "target_batches": 1, "seeds": [0, 1],
        "pretrain": {"lr": 3e-3, "schedule": "wsd"},
        "finetune": {"epochs": 4, "replay": [0.0, 0.75], "lrs": [1e-3]},
        "midtrain": {"epochs": 4, "replay": [0.0, 0.5], "alpha": [1.0], "lr": 3e-3},
        "reference": None,
        "ramps": {"finetune": ["linear:1:0.5", "stepped:1:0.9:0.6"], "midtrain": ["upsample-end:0.25:1:0"]},
        "eval": {"interval": 0, "sequences": 8, "batch_size": 8},
    }
    spec.update(kw)
    return study.StudyConfig.model_validate(spec)


def test_ramp_arms_hold_the_same_target_data_and_total_steps(stores):
    labelled = study.build_runs(_study(stores))
    arms = [(lab, cfg) for lab, cfg in labelled if lab["setting"].endswith("_ramp")]
    assert sorted({(lab["setting"], lab["schedule"]) for lab, _ in arms}) == [
        ("finetune_ramp", "linear:1:0.5"), ("finetune_ramp", "stepped:1:0.9:0.6"),
        ("midtrain_ramp", "upsample-end:0.25:1:0")]
    assert len(arms) == 6  # 3 shapes x 2 seeds
    for lab, cfg in labelled:
        plan = RunPlan(cfg, open_stores(cfg))
        assert plan.total_steps == 64
        last = plan.phases[-1]
        drawn = last.mixture.consumed(last.steps)[cfg.phases[-1].source_names()[0]]
        assert drawn == 8 * 4, (lab, drawn)  # one batch of target x 4 epochs, in every arm
    # linear:1:0.5 has mean rho 0.75: its fine-tuning is as long as the rho = 0.75 arm's
    ft = {lab.get("schedule") or lab["rho"]: cfg for lab, cfg in labelled if lab["setting"].startswith("finetune")}
    assert ft["linear:1:0.5"].phases[0].steps == ft[0.75].phases[0].steps == 64 - 16


def test_ramp_arms_draw_the_same_target_data_as_the_two_stage_arms_of_their_seed(stores):
    # with a reference point at 2 batches, each seed's block of the shuffle is 2 batches long
    cfg = _study(stores, reference={"target_batches": [0.5, 2], "family": "baseline"})
    for lab, run in study.build_runs(cfg):
        src = run.data.sources[cfg.target_name]
        if lab.get("reference"):
            continue
        assert src.first == lab["seed"] * 2 * cfg.batch_size and src.sequences == cfg.batch_size, lab


def test_ramp_arms_share_the_generic_prefix_and_the_comparison_is_paired(stores, tmp_path):
    cfg = _study(stores, finetune=None, ramps={"finetune": [], "midtrain": ["upsample-end:0.25:1:0"]})
    out = tmp_path / "study"
    results = study.run_study(cfg, out)
    # the ramp's first 48 steps are pure generic, as the alpha = 1 arms' Stage 1: one prefix for all
    assert results["compute"]["steps_computed"] < results["compute"]["steps_alone"]
    comp = json.loads((out / "results.json").read_text())["ramps"]["midtrain"]
    rows = {(r["setting"], r.get("schedule"), r["rho"], r["seed"]): r["target_loss"] for r in results["runs"]}
    best_rho = comp["best"]["rho"]
    diff = [rows[("midtrain_ramp", "upsample-end:0.25:1:0", 0.875, s)] - rows[("midtrain", None, best_rho, s)]
            for s in (0, 1)]
    row = comp["shapes"]["upsample-end:0.25:1:0"]
    assert row["seeds"] == [0, 1] and row["loss_diff"]["mean"] == pytest.approx(sum(diff) / 2)


def test_jackknife_t_interval_by_hand():
    # leave-one-out means of [1, 2, 3, 6]: 11/3, 10/3, 3, 2; jackknife se = sd / sqrt(n) for a mean
    r = ramps.jackknife_t([1.0, 2.0, 3.0, 6.0], 0.9)
    sd = math.sqrt(sum((v - 3.0) ** 2 for v in [1, 2, 3, 6]) / 3)
    assert r["mean"] == 3.0 and r["se"] == pytest.approx(sd / 2)
    assert r["interval"] == pytest.approx([3.0 - 2.3533634 * sd / 2, 3.0 + 2.3533634 * sd / 2], rel=1e-6)  # t(0.95, 3)
    assert ramps.jackknife_t([1.0], 0.9)["interval"] is None


def test_compare_ramps_names_the_best_arm_and_the_verdict():
    rows = [{"setting": "midtrain", "rho": rho, "alpha": 1.0, "lr": 3e-3, "seed": s, "target_loss": base + d}
            for rho, base in ((0.0, 5.0), (0.5, 5.2)) for s, d in enumerate([0.0, 0.01, -0.01, 0.02])]
    rows += [{"setting": "midtrain_ramp", "schedule": "linear:1:0", "rho": 0.5, "seed": s, "target_loss": 4.9 + d}
             for s, d in enumerate([0.0, 0.012, -0.008, 0.02])]
    comp = ramps.compare_ramps(rows, {"midtrain": {"fit": {"A": 1.0, "B": 0.5, "C": 4.0}}}, level=0.9)
    m = comp["midtrain"]
    assert m["best"]["rho"] == 0.0
    row = m["shapes"]["linear:1:0"]
    assert row["loss_diff"]["mean"] == pytest.approx(-0.099)  # -0.1 + (0.024 - 0.02) / 4 and row["beats_best"] and not row["loses_to_best"]
    # x_eff = (A / (L - C))^(1/B): seed 0 gives (1/0.9)^2 / (1/1)^2
    assert row["multiplier"] > 1.2
    assert any("beats it" in line for line in ramps.summary_lines(comp))


def test_with_a_reference_curve_every_arm_gets_the_headlines_paired_multiplier():
    from replaytune.study import paired

    # baseline curve L = 5 - 0.2 log2 x (+ a seed offset shared by every run of the seed)
    off = [0.0, 0.03, -0.02, 0.01]
    rows = [{"setting": "midtrain", "rho": 0.0, "alpha": 1.0, "lr": 3e-3, "x": x, "seed": s, "reference": x != 1,
             "target_loss": 5.0 - 0.2 * math.log2(x) + o} for x in (0.5, 1, 2) for s, o in enumerate(off)]
    rows += [{"setting": "midtrain", "rho": 0.5, "alpha": 1.0, "lr": 3e-3, "x": 1, "seed": s, "target_loss": 4.8 + o}
             for s, o in enumerate(off)]  # worth 2x: 0.2 nats lower
    rows += [{"setting": "midtrain_ramp", "schedule": "linear:1:0", "rho": 0.5, "x": 1, "seed": s,
              "target_loss": 4.9 + o + 0.001 * s} for s, o in enumerate(off)]
    m = ramps.compare_ramps(rows, level=0.9)["midtrain"]["paired_multipliers"]
    assert m["interval_method"] == paired.INTERVAL_METHOD and m["seeds"] == 4
    assert m["arms"]["rho=0.5, alpha=1"]["multiplier"] == pytest.approx(2.0)
    ramp = m["arms"]["linear:1:0"]
    assert ramp["multiplier"] == pytest.approx(2 ** ((0.1 - 0.0015) / 0.2), rel=1e-6)
    lo, hi = ramp["interval"]
    assert lo < ramp["multiplier"] < hi
    assert any("multipliers over the no-replay baseline" in line for line in ramps.summary_lines(
        ramps.compare_ramps(rows, level=0.9)))


def test_ramps_preset_is_the_paper_setup_with_ramp_arms():
    cfg = study.load_study(None, ["target_store=t", "generic_store=g"], preset="ramps")
    assert (cfg.steps, cfg.batch_size, cfg.seq_len, cfg.model.preset) == (1024, 1024, 4096, "150m")
    labelled = study.build_runs(cfg)
    arms = [lab for lab, _ in labelled if lab["setting"].endswith("_ramp")]
    assert len(arms) == (3 + 3) * 4  # three shapes per setting, four paired seeds
    ft = {lab["schedule"]: lab["switch_step"] for lab in arms if lab["setting"] == "finetune_ramp"}
    assert set(ft.values()) == {1024 - 256}  # mean rho 0.75: 64 epochs / 0.25, as the rho = 0.75 arm
