"""`finetune --replay-schedule`: a replay ramp end to end on the tiny fixtures, rho counted in loss tokens."""

from __future__ import annotations

import json

import numpy as np
import pytest

from replaytune.cli import main


def test_cli_replay_schedule_runs_a_ramp_with_exact_target_epochs(assets, tmp_path, capsys):
    out = tmp_path / "out"
    code = main([
        "finetune", "--model", str(assets.model), "--target", str(assets.target), "--replay", str(assets.generic),
        "--replay-val", "10", "--epochs", "2", "--seq-len", "32", "--batch-size", "4", "--lr", "3e-3",
        "--eval-sequences", "8", "--eval-interval", "0", "--device", "cpu", "--no-progress", "--output", str(out),
        "--replay-schedule", "linear:0.75:0.25",
    ])
    assert code == 0
    summary = json.loads((out / "finetune.json").read_text())
    plan = summary["plan"]
    n_t = plan["sequences"]["target"]
    # text on both sides: mean target weight 1/2, as rho = 0.5; the target seen exactly twice
    assert plan["replay_schedule"] == "linear:0.75:0.25" and plan["replay_fraction"] == 0.5
    assert plan["steps"] == int(np.ceil(n_t * 2 / (4 * 0.5))) == summary["run"]["steps"]
    assert plan["realised"]["target_epochs"] == pytest.approx(2.0, abs=1e-9)
    cfg = (out / "run" / "config.yaml").read_text()
    assert "ramp: linear:0.75:0.25" in cfg and "replay: 0.0" in cfg
    # the batches move: generic first, target by the end
    metrics = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(m.get("kind") == "eval" for m in metrics)
    report = json.loads((out / "forgetting.json").read_text())
    assert report["plan"]["replay_schedule"] == "linear:0.75:0.25"
    assert report["loss"]["target"]["change"] < 0
    assert "Replay fraction 0.5 (mean of the replay schedule linear:0.75:0.25)" in (out / "forgetting.md").read_text()


def test_replay_schedule_with_a_fixed_fraction_is_refused(finetune_cfg):
    with pytest.raises(Exception, match=r"give replay_fraction \(0.5\) or replay_schedule, not both"):
        finetune_cfg(replay_schedule="linear:0.75:0.25")


def test_a_bad_replay_schedule_names_the_flag(finetune_cfg):
    with pytest.raises(Exception, match=r"--replay-schedule\) linear:0.75:1.5: .*rho must be in \[0, 1\], got 1.5"):
        finetune_cfg(replay_fraction=None, replay_schedule="linear:0.75:1.5")


def test_auto_search_takes_the_schedule_as_one_more_candidate(finetune_cfg):
    from replaytune.finetune import run_finetune

    cfg = finetune_cfg(replay_fraction="auto", replay_candidates=[0.0, 0.5], replay_schedule="linear:0.75:0.25",
                       epochs=4, seq_len=16)
    res = run_finetune(cfg)
    search = json.loads((res.output / "replay_search.json").read_text())
    cands = search["candidates"]
    assert [(c["rho"], c.get("schedule")) for c in cands] == [(0.0, None), (0.5, None), (0.5, "linear:0.75:0.25")]
    assert (res.output / "search" / "ramp-linear_0.75_0.25").is_dir()
    # the ramp runs as long as rho = 0.5 (same mean target weight) and is judged on the same rungs
    assert cands[2]["steps_full"] == cands[1]["steps_full"]
    finished = [c for c in cands if c["eliminated_at"] is None and c["steps_run"] == c["steps_full"]]
    best = min(finished, key=lambda c: c["target_loss"])
    assert (best["rho"], best.get("schedule")) == (search["chosen_rho"], search.get("chosen_schedule"))
    assert res.summary["plan"].get("replay_schedule") == best.get("schedule")
    assert "linear:0.75:0.25" in (res.output / "replay_search.md").read_text()
