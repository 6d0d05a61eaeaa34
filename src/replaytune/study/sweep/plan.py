"""Prefix sharing: which earlier run each run branches from, and at which step (pure, on signature chains).

For any order of runs, the steps computed equal the number of distinct prefixes (the nodes of
the trie of runs' signature chains), the least possible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence


from replaytune.config import RunConfig
from replaytune.errors import ConfigError
from replaytune.study.sweep.grid import run_key
from replaytune.study.sweep.task import RunTask


def common_prefix(a: Sequence[str], b: Sequence[str]) -> int:
    """Largest k with a[k] == b[k], for prefix-hash chains (equal at k implies equal below).

    ``a[0]`` covers the initial state (model init, optimizer settings); k steps are shared
    when ``a[k] == b[k]``. Binary search: chains are monotone in agreement.
    """
    hi = min(len(a), len(b)) - 1
    if hi < 0 or a[0] != b[0]:
        return -1
    lo = 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[mid] == b[mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


@dataclass
class Task:
    """One run of a sweep, with where it branches from and where others branch from it."""

    index: int
    cfg: RunConfig
    run_dir: Path
    steps: int
    branch_from: int | None = None  # index of the task whose checkpoint we start from
    branch_step: int = 0  # steps taken from that checkpoint
    save_at: list[int] = field(default_factory=list)  # steps at which others branch from us

    @property
    def computed_steps(self) -> int:
        return self.steps - self.branch_step

    def job(self, init_from: Path | None) -> "RunTask":
        """What an executor needs to run this task, branching from ``init_from`` (or not)."""
        return RunTask(self.index, self.cfg.name, self.cfg.model_dump_json(), str(self.run_dir),
                       None if init_from is None else str(init_from), tuple(self.save_at))


def plan(signatures: Sequence[Sequence[str]], min_shared: int | float = 1) -> list[tuple[int | None, int]]:
    """For each run (in order): (earlier run to branch from or None, shared steps).

    ``signatures[i]`` is run i's prefix chain (length steps_i + 1). Branching needs at
    least ``min_shared`` shared steps to be worth a checkpoint (a float below 1: that
    fraction of the run's steps). Two runs whose first batches merely happen to agree (a
    target weight of 2 % gives no target sequence in the first steps of a batch of 16)
    share a handful of steps: not worth a checkpoint, and with parallel workers the run
    would wait for its parent to finish.
    """
    out: list[tuple[int | None, int]] = []
    for i, sig in enumerate(signatures):
        need = max(1, math.ceil(min_shared * (len(sig) - 1))) if min_shared < 1 else int(min_shared)
        best, best_k = None, 0
        for j in range(i):
            k = common_prefix(sig, signatures[j])
            if k > best_k:
                best, best_k = j, k
        out.append((best, best_k) if best_k >= need else (None, 0))
    return out


def build_tasks(
    configs: Sequence[RunConfig],
    out_dir: str | Path,
    signatures: Callable[[RunConfig], Sequence[str]] | None = None,
    share_prefixes: bool = True,
    min_shared: int | float = 0.1,
) -> list[Task]:
    """Assign run directories and the branching plan (no training happens here)."""
    out_dir = Path(out_dir)
    tasks = []
    seen: dict[str, int] = {}
    for i, cfg in enumerate(configs):
        key = run_key(cfg)
        if key in seen:
            raise ConfigError(f"runs {seen[key]} and {i} of the sweep have the same config ({cfg.name})")
        seen[key] = i
        run_dir = out_dir / key
        cfg = cfg.model_copy(update={"out_dir": str(run_dir)})
        tasks.append(Task(i, cfg, run_dir, steps=0))
    if signatures is None:
        from replaytune.train import step_signatures as signatures  # type: ignore[no-redef]
    sigs = [list(signatures(t.cfg)) for t in tasks]
    for t, s in zip(tasks, sigs):
        t.steps = len(s) - 1
    _one_eval_cadence(tasks)
    if share_prefixes:
        for t, (src, k) in zip(tasks, plan(sigs, min_shared)):
            if src is not None:
                t.branch_from, t.branch_step = src, k
                if k not in tasks[src].save_at:
                    tasks[src].save_at.append(k)
        for t in tasks:
            t.save_at.sort()
    return tasks


def _one_eval_cadence(tasks: Sequence[Task]) -> None:
    """Give runs with an automatic evaluation interval one explicit interval, the longest run's.

    The automatic interval depends on a run's length; a run branched from a longer one would
    inherit the parent's evaluations in the shared steps and differ from itself run alone.
    With one explicit interval (written into each run's config.yaml) the branched run and the
    same config run alone log the same lines.
    """
    from replaytune.train.evaluation import auto_interval

    auto = [t for t in tasks if t.cfg.eval.interval is None]
    if not auto:
        return
    longest = max(auto, key=lambda t: t.steps)
    n_eval = longest.cfg.eval.sequences * len(longest.cfg.data.sources)
    interval = auto_interval(longest.steps, longest.cfg.data.batch_size, n_eval)
    for t in auto:
        t.cfg = t.cfg.model_copy(update={"eval": t.cfg.eval.model_copy(update={"interval": interval})})
