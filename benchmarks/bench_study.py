"""Compute saved by prefix sharing, and per-run overhead, read from a finished study or demo.

Targets (issue: the controlled study): prefix sharing saves >= 30 % of the demo grid's
compute; per-run overhead (start-up, evaluation, checkpoints, saving) <= 10 % of a run.

* saved: 1 - steps computed / steps if every run were computed alone (``runs/sweep.json``).
* overhead: for every run computed from scratch (no branch), ``(wall - train) / wall`` from its
  record.json, where ``train`` is the time inside optimizer updates (forward, backward, step,
  batch assembly) and ``wall`` the run's whole life in the trainer (start-up, evaluation,
  checkpoints, saving the model). Branched runs inherit their parent's clocks, so they are
  left out of this ratio.

Usage: python benchmarks/bench_study.py DEMO_OR_STUDY_DIR
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from replaytune import rundir


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "demo-out")
    sweep = json.loads((root / "runs" / "sweep.json").read_text())
    alone, computed = sweep["steps_alone"], sweep["steps_computed"]
    print(f"{len(sweep['runs'])} runs: {alone} steps alone, {computed} computed, saved {1 - computed / alone:.1%}")
    fracs = []
    for run in sweep["runs"]:
        if run["branch_from"] is not None:
            continue
        rec = rundir.read_record(root / "runs" / Path(run["run_dir"]).name)  # sweep.json paths are relative to its cwd
        fracs.append((rec["wall_time_s"] - rec["train_time_s"]) / rec["wall_time_s"])
        print(f"  {run['name']:28s} wall {rec['wall_time_s']:7.1f} s  train {rec['train_time_s']:7.1f} s  "
              f"overhead {fracs[-1]:.1%}")
    if fracs:
        print(f"overhead of runs from scratch: median {statistics.median(fracs):.1%}, max {max(fracs):.1%}")
    demo = root / "demo.json"
    if demo.exists():
        print(f"demo wall time: {json.loads(demo.read_text())['wall_time_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
