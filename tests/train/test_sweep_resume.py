"""Interrupted sweeps and studies always resume and end bit-identical, with nothing stranded."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time

import pytest

from .helpers import python, strip_timing, subprocess_env
from .test_sweep_study import _study
from replaytune import rundir
from replaytune.study import runs as study
from replaytune.study import sweep
from replaytune.train import read_metrics

FT = {"epochs": 4, "replay": [0.0, 0.5], "lrs": [1e-3]}


def _leftovers(root):
    """Temporaries and half-deleted checkpoints anywhere under ``root``."""
    bad = [p for p in root.rglob("*") if p.name.startswith(".") and (".tmp-" in p.name or ".old-" in p.name
                                                                      or p.name.startswith((".tmp-", ".old-")))]
    bad += [p for p in root.rglob("step-*") if p.is_dir() and not (p / rundir.STATE).is_file()]
    bad += list(root.rglob(rundir.LOCK))
    return bad


def _finals(tasks):
    return [(t.cfg.name, rundir.read_record(t.run_dir)["final"], strip_timing(read_metrics(t.run_dir)))
            for t in tasks]


def test_run_folder_without_checkpoint_and_stranded_temporaries_resume_identically(stores, tmp_path):
    configs = [c for _, c in study.build_runs(_study(stores, midtrain=None, reference=None, seeds=[0], finetune=FT))]
    ref = sweep.build_tasks(configs, tmp_path / "ref")
    sweep.execute(ref, sweep.LocalLauncher(progress=False))
    tasks = sweep.build_tasks(configs, tmp_path / "killed")
    child = tasks[1]
    assert child.branch_from == 0
    # as if killed after its first metrics lines, before its first checkpoint
    child.run_dir.mkdir(parents=True)
    (child.run_dir / rundir.CONFIG).write_text("name: half\n")
    (child.run_dir / rundir.METRICS).write_text('{"kind": "train", "step": 1}\n{"kind": "tr')
    (child.run_dir / rundir.CHECKPOINTS / ".tmp-step-00000003").mkdir(parents=True)
    (child.run_dir / ".model.tmp-999999-abc").mkdir()  # a final save killed midway
    (child.run_dir / rundir.LOCK).write_text("pid 999999 on host gone\n")  # its stale lock
    sweep.execute(tasks, sweep.LocalLauncher(progress=False))
    assert _finals(tasks) == _finals(ref)
    assert _leftovers(tmp_path / "killed") == []


KILLABLE_STUDY = """
import json, sys, time
import torch
torch.set_num_threads(1)
from replaytune.study import runs as study
from replaytune.train import loop
cfg = study.StudyConfig.model_validate_json(open(sys.argv[1]).read())
slow = loop.Trainer._update
def _update(self, s):
    time.sleep(0.03)  # slow enough to be killed anywhere
    return slow(self, s)
loop.Trainer._update = _update
study.run_study(cfg, sys.argv[2], share_prefixes=True)
"""


def test_study_killed_at_random_points_ends_identical_with_nothing_stranded(stores, tmp_path):
    cfg = _study(stores, midtrain={"epochs": 4, "replay": [0.0, 0.5], "alpha": [1.0], "lr": 3e-3},
                 reference=None, seeds=[0], finetune=FT)
    whole = study.run_study(cfg, tmp_path / "whole")
    (tmp_path / "cfg.json").write_text(cfg.model_dump_json())
    (tmp_path / "run.py").write_text(KILLABLE_STUDY)
    rng = random.Random(0)
    out = tmp_path / "killed"
    for _ in range(3):  # kill, rerun, kill again ... at random moments
        proc = subprocess.Popen([python(), str(tmp_path / "run.py"), str(tmp_path / "cfg.json"), str(out)],
                                env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.5, 4.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    again = study.run_study(cfg, out)
    strip = lambda res: [{k: v for k, v in r.items() if k != "wall_time_s"} for r in res["runs"]]  # noqa: E731
    assert strip(again) == strip(whole)
    assert json.dumps(again["multipliers"]) == json.dumps(whole["multipliers"])
    assert _leftovers(out) == []


def test_automatic_eval_cadence_is_one_for_the_sweep_so_branched_equals_alone(stores, tmp_path):
    from .helpers import tiny_config
    from replaytune import config
    from replaytune.train import train

    # alone, a (20 steps) would evaluate every 5 steps and b (28) every 6: in the shared 12 they differ
    a = tiny_config(stores, tmp_path / "a", eval={"interval": None, "sequences": 3, "batch_size": 8},
                    checkpoint={"interval": 0, "keep": 1})
    b = config.validate(config.apply_overrides(a.model_dump(mode="json"), ["phases.1.finetune.replay=0.75", "name=b"]))
    tasks = sweep.build_tasks([a, b], tmp_path / "sweep", min_shared=1)
    assert tasks[1].branch_from == 0 and tasks[0].cfg.eval.interval == tasks[1].cfg.eval.interval is not None
    sweep.execute(tasks, sweep.LocalLauncher(progress=False))
    alone = train(tasks[1].cfg.model_copy(update={"out_dir": str(tmp_path / "alone")}))
    assert strip_timing(read_metrics(tasks[1].run_dir)) == strip_timing(read_metrics(tmp_path / "alone"))
    assert rundir.read_record(tasks[1].run_dir)["final"] == alone["final"]


def _children(pid: int) -> set[int]:
    """Every descendant process of ``pid`` (from /proc)."""
    from pathlib import Path

    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        parents[int(stat.parent.name)] = int(fields[1])
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        kids = {c for c, pp in parents.items() if pp == p}
        out |= kids
        todo += list(kids)
    return out


def _alive(pid: int) -> bool:
    from pathlib import Path

    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigterm_to_a_study_with_workers_stops_its_workers_and_it_resumes_identical(stores, tmp_path):
    import os
    import sys

    if not os.path.isdir("/proc"):
        import pytest

        pytest.skip("reads /proc to find the worker processes")
    cfg = _study(stores, midtrain=None, reference=None, seeds=[0], finetune=FT, steps=400)
    (tmp_path / "study.json").write_text(cfg.model_dump_json())
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "replaytune.cli", "study", str(tmp_path / "study.json"), "--out",
                             str(out), "--workers", "2"], env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    workers: set[int] = set()
    while time.time() < deadline and not list(out.glob("runs/*/checkpoints/step-*")):
        workers |= _children(proc.pid)
        time.sleep(0.2)
    assert proc.poll() is None, "the study ended before it could be stopped: give it more steps"
    workers |= _children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "terminated" in err
    time.sleep(1)
    assert workers and not [p for p in workers if _alive(p)]  # no worker left training
    assert not list(out.rglob(rundir.LOCK))
    again = study.run_study(cfg, out)
    whole = study.run_study(cfg, tmp_path / "whole")
    assert [r["target_loss"] for r in again["runs"]] == [r["target_loss"] for r in whole["runs"]]


def test_a_second_sweep_on_the_same_folder_is_refused_naming_the_holder(stores, tmp_path):
    import pytest

    cfg = _study(stores, midtrain=None, reference=None, seeds=[0], finetune=FT)
    configs = [c for _, c in study.build_runs(cfg)]
    tasks = sweep.build_tasks(configs, tmp_path / "runs")
    holder = rundir.RunLock(tmp_path / "runs").acquire()  # a first sweep, still running
    try:
        with pytest.raises(rundir.RunLocked, match=r"runs is in use by pid \d+ on host"):
            sweep.execute(tasks, sweep.LocalLauncher(progress=False))
        assert not any(t.run_dir.exists() for t in tasks)  # refused before any run started
    finally:
        holder.release()
    sweep.execute(tasks, sweep.LocalLauncher(progress=False))  # once it is gone, the sweep runs
    assert all(rundir.is_finished(t.run_dir) for t in tasks) and _leftovers(tmp_path) == []


@pytest.mark.slow
def test_a_study_with_workers_killed_over_2_to_25_seconds_ends_identical(stores, tmp_path):
    """SIGKILL to the parent of a two-worker study at seeded moments between 2 and 25 s (slow)."""
    import os
    import sys

    cfg = _study(stores, midtrain={"epochs": 4, "replay": [0.0, 0.5], "alpha": [1.0], "lr": 3e-3},
                 reference={"target_batches": [0.5, 2], "family": "baseline"}, seeds=[0, 1], finetune=FT, steps=1200,
                 batch_size=4)
    (tmp_path / "study.json").write_text(cfg.model_dump_json())
    out = tmp_path / "killed"
    rng = random.Random(7)
    kills = 0
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-m", "replaytune.cli", "study", str(tmp_path / "study.json"), "--out",
                                 str(out), "--workers", "2"], env=subprocess_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(2.0, 25.0))
        if proc.poll() is None:
            kills += 1
            for pid in _children(proc.pid):  # SIGKILL leaves no time for cleanup: the workers die too
                os.kill(pid, signal.SIGKILL)
            proc.send_signal(signal.SIGKILL)
        proc.wait()
    if kills == 0:
        pytest.fail("no kill landed: the study finished first; give it more steps")
    again = study.run_study(cfg, out)
    whole = study.run_study(cfg, tmp_path / "whole")
    strip = lambda res: [{k: v for k, v in r.items() if k != "wall_time_s"} for r in res["runs"]]  # noqa: E731
    assert strip(again) == strip(whole)
    assert _leftovers(out) == []


