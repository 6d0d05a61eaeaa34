"""The scheduler: when each task may start (its branch checkpoint exists), skips and resumes, the log.

Shared by every executor, so the same sweep gives the same records in-process, in local
processes or on Ray.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence


from replaytune import rundir
from replaytune.fsio import write_text
from replaytune.study.sweep.plan import Task
from replaytune.study.sweep.task import Launcher
from replaytune.study.sweep.executors import Executor, InlineExecutor, ProcessExecutor


@dataclass
class SweepResult:
    records: list[Mapping[str, Any]]
    total_steps: int  # steps if every run were computed alone
    computed_steps: int  # steps actually planned with prefix sharing
    skipped: list[str]  # runs already finished before this call

    @property
    def saved_fraction(self) -> float:
        return 1.0 - self.computed_steps / self.total_steps if self.total_steps else 0.0


def branch_checkpoint(task: Task, step: int) -> Path:
    """Where the checkpoint others branch from lives (kept, never rotated away)."""
    return rundir.checkpoint_dir(task.run_dir, step)


def _decide(task: Task, tasks: Sequence[Task]) -> tuple[Mapping[str, Any] | None, Path | None, str]:
    """(record if finished earlier, checkpoint to branch from, how it starts) for one task."""
    finished = rundir.is_finished(task.run_dir)
    needed = [s for s in task.save_at if not branch_checkpoint(task, s).exists()]
    later_needs = any(o.branch_from == task.index and not rundir.is_finished(o.run_dir) for o in tasks)
    if finished and not (needed and later_needs):
        return rundir.read_record(task.run_dir), None, "finished earlier, skipped"
    init_from, how = None, "from scratch"
    if task.branch_from is not None:
        ck = branch_checkpoint(tasks[task.branch_from], task.branch_step)
        if ck.exists():
            init_from = ck
            how = f"branching at step {task.branch_step} from {tasks[task.branch_from].cfg.name}"
        else:
            how = f"branch checkpoint {ck} missing, computing from scratch"
    if finished:  # finished, but checkpoints that later runs branch from are gone: redo it
        (task.run_dir / rundir.RECORD).unlink()
    elif rundir.is_resumable(task.run_dir):
        how = f"resuming from its checkpoint at step {rundir.checkpoint_steps(task.run_dir)[-1]}"
    return None, init_from, how


def execute(
    tasks: Sequence[Task],
    launcher: Launcher | None = None,
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr),
    workers: int = 1,
    executor: Executor | None = None,
) -> SweepResult:
    """Run every task, skipping finished ones, branching where planned.

    Where runs execute is the ``executor``'s business: by default one after another in this
    process (:class:`InlineExecutor` with ``launcher``), or with ``workers > 1`` (and no
    launcher) in that many local processes (:class:`ProcessExecutor`); on a Ray cluster with
    :class:`replaytune.study.sweep.ray.RayExecutor`. The scheduling is the same for all: a run starts
    as soon as the checkpoint it branches from exists (the parent may still be running: the
    demo's first run would otherwise hold the second core idle for its whole length), a run
    finished earlier is skipped, a half-done one resumes.
    """
    total = sum(t.steps for t in tasks)
    computed = sum(t.computed_steps for t in tasks)
    if executor is None:
        executor = ProcessExecutor(workers) if workers > 1 and launcher is None else InlineExecutor(launcher)
    show = launcher is None  # a launcher given by the caller reports (or not) on its own
    # one sweep at a time on a folder of runs: a second one is refused at once, naming the holder
    # (each run directory has its own lock too, taken by the process that trains in it)
    lock = rundir.RunLock(Path(os.path.commonpath([str(t.run_dir.resolve().parent) for t in tasks]))) if tasks else None
    if lock is not None:
        lock.acquire()
    try:
        return _schedule(tasks, executor, log, total, computed, show)
    finally:
        if lock is not None:
            lock.release()


def _schedule(tasks: Sequence[Task], executor: Executor, log: Callable[[str], None], total: int, computed: int,
              show: bool) -> SweepResult:
    from tqdm.auto import tqdm

    records: dict[int, Mapping[str, Any]] = {}
    skipped: list[str] = []
    waiting = list(range(len(tasks)))
    running: dict[Any, int] = {}  # handle -> task index
    expected: dict[int, int] = {}  # the step each submitted task should start at
    counted: dict[int, int] = {}  # updates reported per task
    at: dict[int, int] = {}  # latest step of each running task
    inline = isinstance(executor, InlineExecutor)
    bar: Any = None

    def on_step(i: int, step: int) -> None:
        counted[i] = counted.get(i, 0) + 1
        at[i] = step
        if counted[i] <= tasks[i].computed_steps:
            bar.update(1)
        if not inline:
            bar.set_postfix_str(", ".join(f"{tasks[j].cfg.name} {at.get(j, tasks[j].branch_step)}/{tasks[j].steps}"
                                          for j in running.values()), refresh=False)

    root = Path(os.path.commonpath([str(t.run_dir.resolve()) for t in tasks])) if tasks else Path(".")
    try:
        executor.start(root, on_step)  # may take a while (a Ray instance starting): the clock starts after it
        t0 = time.time()
        # in-process runs draw their own bar at position 0; this one counts every step the sweep computes
        bar = tqdm(total=computed, desc=executor.label, unit="step", dynamic_ncols=True, disable=not show,
                   position=1 if inline else None, leave=True)
        while waiting or running:
            for i in list(waiting):
                task = tasks[i]
                parent = task.branch_from
                if parent is not None and parent not in records and not branch_checkpoint(
                        tasks[parent], task.branch_step).exists():
                    continue  # its branch point is not computed yet (a checkpoint appears whole, by rename)
                if len(running) >= executor.max_running:
                    break
                waiting.remove(i)
                record, init_from, how = _decide(task, tasks)
                log(f"[{i + 1}/{len(tasks)}] {task.cfg.name}: {task.steps} steps, {how} ({time.time() - t0:.0f} s elapsed)")
                if record is not None:
                    records[i] = record
                    skipped.append(task.cfg.name)
                    bar.update(task.computed_steps)
                    continue
                job = task.job(init_from)
                expected[i] = job.start_step()
                running[executor.submit(job)] = i
            if not running:
                if waiting:  # cannot happen: a run only branches from an earlier one
                    raise RuntimeError(f"sweep stalled: {[tasks[i].cfg.name for i in waiting]} wait on unfinished runs")
                continue
            for handle in executor.wait(list(running), timeout=0.5):
                i = running.pop(handle)
                out = executor.outcome(handle)
                records[i] = out.record
                bar.update(max(0, tasks[i].computed_steps - counted.get(i, 0)))
                if out.started_at is not None and out.started_at != expected[i]:
                    log(f"{tasks[i].cfg.name}: an attempt of the run died and was retried; it resumed from its "
                        f"checkpoint at step {out.started_at}")
    finally:
        executor.close()
        if bar is not None:
            bar.close()
    return SweepResult([records[i] for i in range(len(tasks))], total, computed, skipped)


def write_summary(out_dir: Path, tasks: Sequence[Task], result: SweepResult) -> Path:
    summary = {
        "runs": [
            {
                "name": t.cfg.name,
                "run_dir": str(t.run_dir),
                "steps": t.steps,
                "branch_from": tasks[t.branch_from].cfg.name if t.branch_from is not None else None,
                "branch_step": t.branch_step,
                "final": r.get("final"),
            }
            for t, r in zip(tasks, result.records)
        ],
        "steps_alone": result.total_steps,
        "steps_computed": result.computed_steps,
        "compute_saved": result.saved_fraction,
    }
    path = Path(out_dir) / "sweep.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(summary, indent=2))
    return path
