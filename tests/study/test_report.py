"""build_report and `replaytune report`: plots and report.md from saved records only."""

from __future__ import annotations

import json
import shutil

import pytest

from replaytune import cli
from replaytune.errors import ReplaytuneError
from replaytune.study.report import PLOTS, build_report

from .conftest import REF, make_results

PNG = b"\x89PNG\r\n\x1a\n"
NAMES = [p[0] for p in PLOTS]
RESAMPLES = 100  # keeps each build near a second; the default is 1000


def x_eff(loss):
    A, B, C = REF
    return (A / (loss - C)) ** (1 / B)


def test_builds_all_plots_and_report(results_dir):
    paths = build_report(results_dir, resamples=RESAMPLES)
    assert [p.name for p in paths] == [f"{n}.png" for n in NAMES] + ["report.md"]
    for p in paths[:-1]:
        data = p.read_bytes()
        assert data.startswith(PNG) and len(data) > 20_000  # a real, drawn figure
    md = (results_dir / "report.md").read_text()
    for n in NAMES:
        assert f"](plots/{n}.png)" in md
    assert "Skipped plot" not in md
    # every run is a row of the runs table
    runs = json.loads((results_dir / "results.json").read_text())["runs"]
    for r in runs:
        assert f"| {r['name']} | {r['setting']} |" in md
    # multipliers recomputed from the records: fine-tuning best replay (rho .5, lr 3e-4, seeds 4.30/4.31)
    # over no replay (rho 0, lr 3e-4, seeds 4.55/4.56), both on the exact synthetic reference curve
    ft = x_eff((4.30 + 4.31) / 2) / x_eff((4.55 + 4.56) / 2)
    mt = x_eff(4.0) / x_eff(4.3)
    assert f"| finetune_replay | rho=0.5, lr=0.0003 | rho=0, lr=0.0003 | 4.3050 / 4.5550 | -0.2500 | 0.0071 | {ft:.2f}x [" in md
    assert f"{mt:.2f}x [" in md
    assert "replay **helped** beyond seed-to-seed noise" in md
    assert "seed-to-seed std 0.0120" in md  # the given midtrain noise, next to the difference
    assert "Replay lowered the held-out target loss beyond seed-to-seed noise in 3 of 3 comparisons." in md
    # results.json recorded no multipliers: the report says what it recomputed
    assert f"results.json records finetune_replay = null; recomputed from the records: {ft:.4g}." in md


def test_rebuild_is_byte_identical(results_dir, tmp_path):
    first = {p.name: p.read_bytes() for p in build_report(results_dir, resamples=RESAMPLES)}
    copy = tmp_path / "copy"
    shutil.copytree(results_dir, copy)
    shutil.rmtree(copy / "plots")
    (copy / "report.md").unlink()
    second = {p.name: p.read_bytes() for p in build_report(copy, resamples=RESAMPLES)}
    assert first == second
    assert not [p for p in (copy / "plots").iterdir() if p.name.startswith(".")]  # no temp files left


def test_missing_curves_skip_plots_with_notes(tmp_path):
    d = make_results(tmp_path / "nocurves", curves=False)
    (d / "plots").mkdir()
    (d / "plots" / "switch_curves.png").write_bytes(PNG)  # stale file from an earlier build
    paths = build_report(d, resamples=RESAMPLES)
    assert [p.name for p in paths] == ["loss_vs_rho.png", "midtrain_heatmap.png", "efficiency_fit.png", "report.md"]
    assert not (d / "plots" / "switch_curves.png").exists()
    md = (d / "report.md").read_text()
    assert "- Skipped plot **Loss around the switch step**: Fine-tuning: run 'ft-rho0-lr0.0003-s0' has no run_dir" in md
    assert "- Skipped plot **Training vs held-out target loss over epochs**:" in md
    assert "](plots/switch_curves.png)" not in md


def test_missing_metrics_file_is_named(results_dir):
    (results_dir / "runs" / "mt-rho0.5-a1" / "metrics.jsonl").unlink()
    build_report(results_dir, resamples=0)
    md = (results_dir / "report.md").read_text()
    assert "Switch plot: skipped Mid-training (alpha=1): runs/mt-rho0.5-a1/metrics.jsonl not found." in md
    assert (results_dir / "plots" / "switch_curves.png").exists()  # the fine-tuning row still drawn


def test_no_reference_runs_uses_saved_fit_or_skips(tmp_path):
    d = make_results(tmp_path / "noref", curves=False)
    data = json.loads((d / "results.json").read_text())
    data["runs"] = [r for r in data["runs"] if r["setting"] != "reference"]
    (d / "results.json").write_text(json.dumps(data))
    md_paths = build_report(d, resamples=RESAMPLES)
    md = (d / "report.md").read_text()
    assert "efficiency_fit.png" not in [p.name for p in md_paths]
    assert "Skipped plot **Reference fit and effective data**: no reference fit" in md
    assert "| finetune_replay |" in md and "none (loss at or below the asymptote C: no finite effective data)" in md
    A, B, C = REF
    data["efficiency"] = {"fit": {"A": A, "B": B, "C": C}}
    (d / "results.json").write_text(json.dumps(data))
    assert "efficiency_fit.png" in [p.name for p in build_report(d, resamples=RESAMPLES)]
    md = (d / "report.md").read_text()
    assert "Fit taken from results.json `efficiency.fit`" in md
    assert f"{x_eff(4.0) / x_eff(4.3):.2f}x" in md


def test_reference_points_from_saved_efficiency_input(tmp_path):
    d = make_results(tmp_path / "effref", curves=False)
    data = json.loads((d / "results.json").read_text())
    ref = [r for r in data["runs"] if r["setting"] == "reference"]
    data["runs"] = [r for r in data["runs"] if r["setting"] != "reference"]
    data["efficiency"] = {"reference": [{"x": r["x"], "loss": r["target_loss"]} for r in ref]}
    (d / "results.json").write_text(json.dumps(data))
    assert "efficiency_fit.png" in [p.name for p in build_report(d, resamples=RESAMPLES)]
    md = (d / "report.md").read_text()
    assert f"{x_eff(4.0) / x_eff(4.3):.2f}x [" in md  # refitted, so with an interval
    assert "5 reference points" in md


def test_single_seed_and_losing_replay_are_reported_honestly(tmp_path):
    d = make_results(tmp_path / "oneseed", curves=False, seeds=False)
    data = json.loads((d / "results.json").read_text())
    for r in data["runs"]:
        if r["setting"] == "finetune" and r["rho"] > 0:
            r["target_loss"] += 0.5  # replay now hurts fine-tuning
    (d / "results.json").write_text(json.dumps(data))
    build_report(d, resamples=0)
    md = (d / "report.md").read_text()
    assert "target loss 4.8000 vs 4.5500 (+0.2500; seed-to-seed noise not measured)" in md  # best replay rho .5
    assert "higher with replay, but **not established**: seed-to-seed noise was not measured" in md
    assert "Seed-to-seed noise was not measured for every setting" in md
    expect = x_eff(4.80) / x_eff(4.55)
    assert f"| {expect:.2f}x |" in md and expect < 1


def test_cli_report(results_dir, capsys, tmp_path):
    assert cli.main(["report", str(results_dir), "--bootstrap", "20"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed[-1] == str(results_dir / "report.md") and len(printed) == 6
    assert cli.main(["report", str(tmp_path / "nope")]) == 2
    assert f"{tmp_path / 'nope'}: no such directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["report", str(tmp_path / "empty")]) == 2
    assert f"{tmp_path / 'empty' / 'results.json'}: no such file" in capsys.readouterr().err


def test_bad_metrics_line_skips_with_file_and_line(results_dir):
    path = results_dir / "runs" / "ft-rho0.5-lr0.0003-s0" / "metrics.jsonl"
    lines = path.read_text().splitlines()
    lines[3] = "{oops"
    path.write_text("\n".join(lines) + "\n")
    build_report(results_dir, resamples=0)
    md = (results_dir / "report.md").read_text()
    assert "runs/ft-rho0.5-lr0.0003-s0/metrics.jsonl:4: not valid JSON" in md


@pytest.mark.parametrize("content", ["{not json", json.dumps({"runs": "no"})])
def test_bad_results_json(tmp_path, content):
    (tmp_path / "results.json").write_text(content)
    with pytest.raises(ReplaytuneError, match="results.json"):
        build_report(tmp_path)
