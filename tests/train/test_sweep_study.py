"""Sweeps and the study end to end on tiny synthetic stores: prefix sharing is exact and saves
compute, an interrupted sweep resumes, results.json and the report come out of the records."""

from __future__ import annotations

import json

import pytest

from .helpers import TINY
from replaytune.train.plan import resolve_phase
from replaytune.study import report
from replaytune.study import runs as study
from replaytune.study import sweep


def _study(stores, **kw):
    spec = {
        "target_store": str(stores["target"]),
        "generic_store": str(stores["generic"]),
        "model": {"preset": "tiny", "overrides": dict(TINY)},
        "seq_len": 16,
        "batch_size": 8,
        "steps": 40,
        "target_batches": 1,
        "seeds": [0, 1],
        "pretrain": {"lr": 3e-3, "schedule": "wsd"},
        "finetune": {"epochs": 4, "replay": [0.0, 0.5], "lrs": [1e-3]},
        "midtrain": {"epochs": 4, "replay": [0.0, 0.5], "alpha": [1.0, 0.5], "lr": 3e-3},
        "reference": {"target_batches": [0.5, 1, 2]},
        "eval": {"interval": 0, "sequences": 8, "batch_size": 8},
    }
    spec.update(kw)
    return study.StudyConfig.model_validate(spec)


def test_study_runs_match_the_paper_protocol(stores):
    runs = study.build_runs(_study(stores))
    by = {cfg.name: (labels, cfg) for labels, cfg in runs}
    # ft: 2 rho x 2 seeds; mt: alpha = 1 with both seeds (2 rho x 2), alpha = 0.5 with seed 0 (2);
    # ref: 3 amounts x 2 seeds (the study's seeds, disjoint draws of target data)
    assert len(runs) == 2 * 2 + (2 * 2 + 2) + 3 * 2
    for name, (labels, cfg) in by.items():
        assert sum(resolve_phase(p)[1] for p in cfg.phases) == 40, name  # total steps fixed
    # rho = 0.5 doubles fine-tuning (1 batch x 4 epochs = 4 steps -> 8), pre-training shrinks by 4
    ft = by["ft_rho0.5_lr0.001_s1"][1]
    assert [resolve_phase(p)[1] for p in ft.phases] == [32, 8] and ft.phases[1].reset_optimizer and ft.phases[1].seed == 1
    assert ft.data.sources["target"].sequences == 8  # one batch of unique target data ...
    # ... from seed 1's own block of the shuffled sequences: 16 long, the most any run uses (x = 2)
    assert ft.data.sources["target"].first == 16 and ft.data.sources["target"].draw == 0
    assert by["mt_rho0.5_alpha1_s1"][1].data.sources["target"].first == 16 and "mt_rho0.5_alpha0.5" in by
    ref = by["ref_x2_s1"][1]
    assert ref.data.sources["target"].sequences == 16 and ref.phases[0].uniform.gamma == pytest.approx(2 * 4 / 40)
    assert ref.data.sources["target"].first == 16 and ref.phases[0].lr.schedule == "cosine"  # the paper's launcher
    # without a draw: the s-th run of n sequences of the store's order, as before
    plain = {c.name: c for _, c in study.build_runs(_study(stores, draw=None))}
    assert plain["ft_rho0.5_lr0.001_s1"].data.sources["target"].first == 8
    assert plain["ft_rho0.5_lr0.001_s1"].data.sources["target"].draw is None


def test_baseline_reference_family_repeats_each_baseline_at_more_target_data(stores):
    cfg = _study(stores, reference={"target_batches": [0.5, 1, 2], "family": "baseline", "seeds": [0, 1]})
    runs = study.build_runs(cfg)
    refs = {c.name: (lab, c) for lab, c in runs if lab.get("reference")}
    # x = 1 is the baselines themselves; x = 0.5 and 2: fine-tuning (one LR) and mid-training, 2 seeds each
    assert sorted(refs) == sorted(f"{k}_x{x}{lr}_s{s}" for k, lr in (("ftref", "_lr0.001"), ("mtref", ""))
                                  for x in ("0.5", "2") for s in (0, 1))
    lab, ft = refs["ftref_x2_lr0.001_s1"]
    assert lab["setting"] == "finetune" and lab["rho"] == 0.0 and lab["x"] == 2
    # 2 batches x 4 epochs = 8 fine-tuning steps; the total budget stays 40, pre-training shrinks to 32
    assert [resolve_phase(p)[1] for p in ft.phases] == [32, 8] and ft.phases[1].reset_optimizer
    assert ft.data.sources["target"].sequences == 16 and ft.data.sources["target"].first == 16
    lab, mt = refs["mtref_x0.5_s0"]
    # Stage 2 keeps the baseline's 1 batch x 4 epochs = 4 steps and holds half a batch (seen 8 times)
    assert mt.phases[0].two_stage.gamma == pytest.approx(1 * 4 / 40) and mt.phases[0].two_stage.alpha == 1.0
    assert sum(resolve_phase(p)[1] for p in mt.phases) == 40 and mt.data.sources["target"].sequences == 4
    assert lab["switch_step"] == 36


def test_sweep_shares_prefixes_bit_identically_and_resumes(stores, tmp_path):
    cfg = _study(stores, midtrain=None, reference=None)
    labelled = study.build_runs(cfg)
    configs = [c for _, c in labelled]
    shared = sweep.build_tasks(configs, tmp_path / "shared")
    # seeds of one rho share all pre-training; different rho share the WSD stable part
    assert all(t.branch_from is not None for t in shared[1:])
    res = sweep.execute(shared, sweep.LocalLauncher(progress=False))
    assert res.computed_steps < res.total_steps
    alone = sweep.execute(sweep.build_tasks(configs, tmp_path / "alone", share_prefixes=False),
                          sweep.LocalLauncher(progress=False))
    assert alone.computed_steps == alone.total_steps == 4 * 40
    for a, b in zip(res.records, alone.records):
        assert a["final"]["eval"] == b["final"]["eval"]  # bit-identical, not approximately
    # a second call finds everything finished
    again = sweep.execute(sweep.build_tasks(configs, tmp_path / "shared"), sweep.LocalLauncher(progress=False))
    assert len(again.skipped) == len(configs)


def test_study_writes_results_and_report(stores, tmp_path):
    out = tmp_path / "study"
    results = study.run_study(_study(stores, seeds=[0]), out)
    saved = json.loads((out / "results.json").read_text())
    assert saved["runs"] == json.loads(json.dumps(results["runs"]))
    settings = {r["setting"] for r in saved["runs"]}
    assert settings == {"finetune", "midtrain", "reference"}
    for r in saved["runs"]:
        assert set(r) >= {"name", "setting", "rho", "alpha", "lr", "target_loss", "generic_loss"}
        assert r["target_loss"] > 0
        # a reference run is used for its target loss only: its generic set is not evaluated
        assert (r["generic_loss"] is None) if r["setting"] == "reference" else r["generic_loss"] > 0
        assert (out / r["run_dir"] / "record.json").exists()
    assert set(saved["multipliers"]) == {"finetune_replay", "midtrain_replay", "full_schedule"}
    assert saved["compute"]["steps_computed"] < saved["compute"]["steps_alone"]
    written = report.build_report(out)
    assert (out / "report.md") in written and len([p for p in written if p.suffix == ".png"]) >= 3


def test_parallel_workers_give_the_same_runs_as_one_process_with_one_thread(stores, tmp_path):
    import torch

    cfg = _study(stores, midtrain=None, reference=None, seeds=[0])
    configs = [c for _, c in study.build_runs(cfg)]
    par = sweep.execute(sweep.build_tasks(configs, tmp_path / "par"), workers=2)
    assert torch.get_num_threads() == 1  # tests run single-threaded (tests/train/conftest.py)
    seq = sweep.execute(sweep.build_tasks(configs, tmp_path / "seq"), sweep.LocalLauncher(progress=False))
    assert [r["final"]["eval"] for r in par.records] == [r["final"]["eval"] for r in seq.records]


def test_runs_with_another_target_share_the_generic_pretraining_exactly(stores, tmp_path):
    import shutil

    from replaytune.data.store import TokenStore
    from replaytune.train import read_metrics, shared_prefix

    other = tmp_path / "other_target"
    shutil.copytree(stores["target"], other)
    meta = json.loads((other / "meta.json").read_text())
    meta["fingerprint"] = "fp-other-target"
    (other / "meta.json").write_text(json.dumps(meta))
    assert TokenStore(other).fingerprint == "fp-other-target"
    a = study.build_runs(_study(stores, midtrain=None, reference=None, seeds=[0], finetune={"epochs": 4, "replay": [0.0], "lrs": [1e-3]}))[0][1]
    b_study = _study(stores, midtrain=None, reference=None, seeds=[0], finetune={"epochs": 4, "replay": [0.0], "lrs": [1e-3]},
                     target_store=str(other), target_name="other")
    b = study.build_runs(b_study)[0][1]
    assert shared_prefix(a, b) == 36  # the whole pre-training: generic batches, same LR
    tasks = sweep.build_tasks([a, b], tmp_path / "runs")
    assert (tasks[1].branch_from, tasks[1].branch_step) == (0, 36)
    res = sweep.execute(tasks, sweep.LocalLauncher(progress=False))
    alone = sweep.execute(sweep.build_tasks([b], tmp_path / "alone"), sweep.LocalLauncher(progress=False))
    assert res.records[1]["final"] == alone.records[0]["final"]
    lines = read_metrics(tasks[1].run_dir / "metrics.jsonl")
    assert all(set(m["tokens"]) == {"other", "generic"} for m in lines if m["kind"] == "train")


def test_switch_evals_land_around_each_switch_in_the_first_seed_only(stores):
    runs = {c.name: c for _, c in study.build_runs(_study(stores, reference=None, switch_evals=[-8, -2, 2, 6]))}
    ft = runs["ft_rho0.5_lr0.001_s0"]  # pre-training 32 steps, fine-tuning 8
    assert ft.phases[0].eval_at == [24, 30] and ft.phases[1].eval_at == [2, 6]
    assert runs["ft_rho0.5_lr0.001_s1"].phases[1].eval_at == []
    mt = runs["mt_rho0.5_alpha1_s0"]  # gamma 4/40, rho 0.5: Stage 2 = the last 8 steps, switch at 32
    assert mt.phases[0].eval_at == [24, 30, 34, 38]


def test_a_study_with_a_bad_store_writes_nothing(stores, tmp_path):
    from replaytune.errors import ReplaytuneError

    cfg = _study(stores, midtrain=None, reference=None, seeds=[0], target_store=str(tmp_path / "nope"))
    with pytest.raises(ReplaytuneError, match="nope"):
        study.run_study(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_study_auto_reports_the_search_choice_next_to_the_grid(stores, tmp_path):
    cfg = _study(stores, midtrain=None, reference=None, replay_search=True,
                 finetune={"epochs": 8, "replay": [0.0, 0.5, 0.75], "lrs": [1e-3]})
    runs = {c.name: c for _, c in study.build_runs(cfg)}
    assert runs["ft_rho0.5_lr0.001_s1"].phases[1].eval_at == [2, 4, 8, 16]  # the rungs of a 16-step phase
    res = study.run_study(cfg, tmp_path / "out")["replay_search"]["finetune"]
    finals = {}
    for r in json.loads((tmp_path / "out" / "results.json").read_text())["runs"]:
        finals.setdefault(r["rho"], []).append(r["target_loss"])
    means = {k: sum(v) / len(v) for k, v in finals.items()}
    assert res["grid_best"]["rho"] == min(means, key=means.get)
    assert [p["seed"] for p in res["per_seed"]] == [0, 1]
    for p in res["per_seed"]:
        assert p["chosen_rho"] in (0.0, 0.5, 0.75) and p["chosen_mean_loss"] == pytest.approx(means[p["chosen_rho"]])
        assert p["steps_grid"] == 8 + 16 + 32 and p["steps_computed"] < p["steps_grid"]
        assert p["within_std"] in (True, False)


def test_study_auto_covers_mid_training_over_stage_2(stores, tmp_path):
    cfg = _study(stores, finetune=None, reference=None, replay_search=True,
                 midtrain={"epochs": 4, "replay": [0.0, 0.5], "alpha": [1.0], "lr": 3e-3})
    runs = {c.name: c for _, c in study.build_runs(cfg)}
    assert runs["mt_rho0.5_alpha1_s0"].phases[0].eval_at == [33, 34, 36, 40]  # Stage 2 = steps 32..40
    res = study.run_study(cfg, tmp_path / "out")["replay_search"]
    assert set(res) == {"midtrain"} and len(res["midtrain"]["per_seed"]) == 2
    assert all(p["steps_grid"] == 4 + 8 and p["chosen_lr"] == 3e-3 for p in res["midtrain"]["per_seed"])


def test_midtrain_lr_is_chosen_on_the_baseline_then_every_rho_runs_at_it_and_comparisons_are_paired(stores, tmp_path):
    cfg = _study(stores, seeds=[0, 1, 2], batch_size=4,  # 3 seeds x blocks of 2 batches: 24 of the 27 sequences
                 finetune={"epochs": 4, "replay": [0.0, 0.5], "lrs": [1e-3, 3e-3]},
                 midtrain={"epochs": 4, "replay": [0.0, 0.5], "alpha": [1.0], "lr": 3e-3, "lrs": [3e-3, 1e-3]},
                 reference={"target_batches": [0.5, 2], "family": "baseline"},
                 eval={"interval": 0, "sequences": 8, "batch_size": 8, "split": True})
    first = study.build_runs(cfg)
    assert {(lab["rho"], lab["lr"]) for lab, _ in first if lab["setting"] == "midtrain"} == {(0.0, 3e-3), (0.0, 1e-3)}
    out = tmp_path / "out"
    res = study.run_study(cfg, out)
    choice = res["meta"]["midtrain_lr"]
    means = choice["mean_loss"]
    assert choice["on"] == "validation" and float(min(means, key=means.get)) == choice["chosen"]
    mt = [r for r in res["runs"] if r["setting"] == "midtrain"]
    # the loser ran only as the baseline; every other run (rho 0.5, the references) at the winner
    assert {r["lr"] for r in mt if r["rho"] != 0.0 or r.get("reference")} == {choice["chosen"]}
    assert len([r for r in mt if r["lr"] != choice["chosen"]]) == 3  # the baseline's 3 seeds
    for r in res["runs"]:  # reported losses from the test half, choices from the validation half
        assert r["target_val"] is not None and r["target_val"] != r["target_loss"]
    assert len(res["meta"]["data_fingerprint"]) == 12
    # the second sweep starts from checkpoints the first kept (planned with every candidate LR's
    # runs in view): none of its runs is computed from step 0
    summary = json.loads((out / "runs" / "sweep.json").read_text())
    by_name = {r["name"]: r for r in summary["runs"]}
    assert len(by_name) == len(res["runs"])  # one summary lists both sweeps
    later = [r for r in summary["runs"] if r["name"].startswith(("mt_rho0.5", "mtref"))]
    assert later and all(r["branch_from"] is not None and r["branch_step"] > 0 for r in later)
    first = {c.name for _, c in first}
    assert by_name[f"mt_rho0.5_alpha1_lr{choice['chosen']:g}_s0"]["branch_from"] in first  # a first-sweep checkpoint
    # no choice reads the generic validation half, and references use only their target loss
    for r in summary["runs"]:
        ev = r["final"]["eval"]
        assert ev["generic/val"] is None and ev["generic"] is None
        assert (ev["generic/test"] is None) == r["name"].startswith(("ftref", "mtref")), r["name"]
        assert ev["target/val"] is not None and ev["target/test"] is not None
    c = res["efficiency"]["comparisons"]["finetune_replay"]
    assert c["paired"] is True and c["seeds"] == 3 and c["level"] == 0.9
    assert c["interval_method"].startswith("paired seed jackknife")
    assert set(c) >= {"multiplier", "interval", "interpolated", "bracket_multiplier", "arms", "fit"}
    assert res["midtrain_geometry"][0]["rho"] == 0.0 and len(res["midtrain_geometry"]) == 2
    assert [r["switch_step"] for r in res["midtrain_geometry_paper"]] == [992, 981, 960, 896, 768]
    assert (out / "results.json").exists()
