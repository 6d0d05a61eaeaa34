"""Sweeps: grid expansion (pure), prefix-sharing plan, and a resumable executor.

Grid expansion
    A sweep file holds a ``base`` run config and a ``grid`` of dotted keys to value lists;
    the runs are the cartesian product, each a full validated :class:`RunConfig`. A run's
    directory is keyed by a hash of its resolved config, so an interrupted sweep resumes:
    finished runs (``record.json`` present) are skipped, half-done ones resume from their
    last checkpoint.

Prefix sharing
    Two runs that are identical for their first k steps (same initial weights, same
    batches, same LR at every step) need that prefix computed once. The training engine
    gives every run a chain of prefix fingerprints: ``sig[k]`` hashes everything that
    determines the weights after k steps. Runs are ordered; each run branches from the
    earlier run with which it shares the longest prefix, which saves a checkpoint at that
    step. For any order, the steps computed equal the number of distinct prefixes (the
    nodes of the trie of runs), the least possible. Branching is exact: the result is
    bit-identical to the run computed alone (tests/train/test_sweep_study.py checks it end to end).

Launchers
    Runs execute one after another in this process by default (:class:`LocalLauncher`).
    :class:`TorchrunLauncher` runs each under ``torchrun`` (one node, several GPUs), and
    any object with a ``launch(task)`` method can be plugged in (e.g. one submitting a
    cluster job running the same ``replaytune train`` command).
"""

from __future__ import annotations

import itertools
import json
import math
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import yaml

from replaytune import config as cfgmod
from replaytune import rundir
from replaytune.config import RunConfig
from replaytune.errors import ConfigError
from replaytune.fsio import write_text

# --------------------------------------------------------------------------------------
# Grid expansion (pure)
# --------------------------------------------------------------------------------------


def expand_grid(base: Mapping[str, Any], grid: Mapping[str, Sequence[Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Every combination of ``grid`` values applied to ``base``: [(overrides, config dict)].

    Keys are dotted paths as in ``--set`` (``phases.1.finetune.replay``); the first key
    varies slowest. An empty grid gives the base alone.
    """
    keys = list(grid)
    for k in keys:
        if not isinstance(grid[k], (list, tuple)) or len(grid[k]) == 0:
            raise ConfigError(f"grid.{k}: expected a non-empty list of values")
    out = []
    for values in itertools.product(*(grid[k] for k in keys)):
        chosen = dict(zip(keys, values))
        sets = [f"{k}={json.dumps(v)}" for k, v in chosen.items()]
        out.append((chosen, cfgmod.apply_overrides(dict(base), sets)))
    return out


def run_key(cfg: RunConfig) -> str:
    """Directory name of a run: its name plus a hash of everything but where it is written."""
    data = cfg.model_dump(mode="json")
    data.pop("out_dir", None)
    return f"{cfg.name}-{cfgmod.config_hash(data)[:10]}"


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> tuple[list[RunConfig], Path]:
    """Read a sweep file: ``{base: {...} or path, grid: {key: [values]}, out_dir: DIR}``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file not found: {path}")
    spec = yaml.safe_load(path.read_text()) or {}
    if not isinstance(spec, dict) or "base" not in spec:
        raise ConfigError(f"{path}: a sweep needs 'base' (a run config or its path) and 'grid'")
    base = spec["base"]
    if isinstance(base, str):
        base_path = (path.parent / base) if not Path(base).is_absolute() else Path(base)
        if not base_path.is_file():
            raise ConfigError(f"{path}: base: {base_path} not found (a run config file, relative to the sweep file)")
        base = yaml.safe_load(base_path.read_text())
    base = cfgmod.apply_overrides(base, overrides or [])
    out_dir = Path(spec.get("out_dir", f"runs/{path.stem}"))
    configs = []
    for chosen, data in expand_grid(base, spec.get("grid", {}) or {}):
        name = data.get("name", "run") + "".join(f"_{k.split('.')[-1]}={v}" for k, v in chosen.items())
        data["name"] = name
        cfg = cfgmod.validate(data, f"{path} (grid point {chosen})")
        configs.append(cfgmod.resolve_paths(cfg, path.parent))
    return configs, out_dir


# --------------------------------------------------------------------------------------
# Prefix plan (pure, on signature chains)
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Launchers and executor
# --------------------------------------------------------------------------------------


class Launcher(Protocol):
    def launch(self, task: Task, init_from: Path | None) -> Mapping[str, Any]:
        """Run ``task`` to completion; return its record (the content of record.json)."""


class LocalLauncher:
    """Runs each task in this process through :func:`replaytune.train.loop.train`."""

    def __init__(self, progress: bool = True, callbacks: Sequence[Callable[[Any], None]] = ()):
        self.progress = progress
        self.callbacks = list(callbacks)

    def launch(self, task: Task, init_from: Path | None) -> Mapping[str, Any]:
        from replaytune.train import train

        # a started run continues from its last checkpoint, or (killed before one) starts again
        # from its branch point: the loop prefers a checkpoint to init_from
        return train(task.cfg, resume=rundir.is_started(task.run_dir), init_from=init_from, save_at=task.save_at,
                     progress=self.progress, callbacks=self.callbacks)


class TorchrunLauncher:
    """Runs each task as ``torchrun --nproc_per_node N -m replaytune.cli train ...``.

    The resolved config is written to the run directory first; the command line is the
    same one a cluster job script would run on each node (add ``--nnodes``, ``--node_rank``
    and ``--rdzv_endpoint`` through ``extra``).
    """

    def __init__(self, nproc_per_node: int = 1, extra: Sequence[str] = ()):
        self.nproc = nproc_per_node
        self.extra = list(extra)

    def command(self, task: Task, init_from: Path | None) -> list[str]:
        cfg_path = task.run_dir / "sweep-config.yaml"
        cmd = ["torchrun", f"--nproc_per_node={self.nproc}", *self.extra, "-m", "replaytune.cli", "train",
               str(cfg_path), "--resume"]
        if init_from is not None:
            cmd += ["--init-from", str(init_from)]
        if task.save_at:
            cmd += ["--save-at", ",".join(str(s) for s in task.save_at)]
        return cmd

    def launch(self, task: Task, init_from: Path | None) -> Mapping[str, Any]:
        task.run_dir.mkdir(parents=True, exist_ok=True)
        write_text(task.run_dir / "sweep-config.yaml", cfgmod.dump_yaml(task.cfg))
        cmd = self.command(task, init_from)
        print("+", shlex.join(cmd), file=sys.stderr)
        subprocess.run(cmd, check=True)
        return rundir.read_record(task.run_dir)


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
    return None, init_from, how


def execute(
    tasks: Sequence[Task],
    launcher: Launcher | None = None,
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr),
    workers: int = 1,
) -> SweepResult:
    """Run every task, skipping finished ones, branching where planned.

    With ``workers > 1`` (and no custom launcher) runs go to that many processes, one torch
    thread each; a run starts as soon as the checkpoint it branches from exists (the parent
    may still be running: the demo's first run would otherwise hold the second core idle
    for its whole length). On 2 cores two
    single-threaded processes train tiny models faster than one process with two threads
    (BENCHMARKS.md). Floating-point results depend on the thread count, so a sweep is
    bit-reproducible for a fixed ``workers`` setting.
    """
    total = sum(t.steps for t in tasks)
    computed = sum(t.computed_steps for t in tasks)
    if workers > 1 and launcher is None:
        return _execute_parallel(tasks, workers, log, total, computed)
    overall = None
    if launcher is None:
        # one bar over every step the sweep computes, beside each run's own bar
        from tqdm.auto import tqdm

        overall = tqdm(total=computed, desc="sweep", unit="step", position=1, leave=True, dynamic_ncols=True)
        launcher = LocalLauncher(callbacks=[lambda trainer: overall.update(1)])
    records, skipped = [], []
    t0 = time.time()
    for n, task in enumerate(tasks, 1):
        record, init_from, how = _decide(task, tasks)
        log(f"[{n}/{len(tasks)}] {task.cfg.name}: {task.steps} steps, {how} ({time.time() - t0:.0f} s elapsed)")
        if record is not None:
            records.append(record)
            skipped.append(task.cfg.name)
            continue
        records.append(launcher.launch(task, init_from))
    if overall is not None:
        overall.close()
    return SweepResult(records, total, computed, skipped)


def _worker_train(cfg_json: str, init_from: str | None, save_at: list[int], queue: Any = None, index: int = 0) -> dict[str, Any]:
    """Entry point of a sweep worker process (spawned: no state shared with the parent).

    Each completed update puts ``(index, step)`` on ``queue`` for the parent's progress bar.
    """
    import torch

    from replaytune.config import RunConfig
    from replaytune.train import train

    torch.set_num_threads(1)
    cfg = RunConfig.model_validate_json(cfg_json)
    callbacks = [] if queue is None else [lambda trainer: queue.put((index, trainer.step))]
    return train(cfg, resume=rundir.is_started(cfg.out_dir), init_from=None if init_from is None else Path(init_from),
                 save_at=save_at, progress=False, callbacks=callbacks)


def _execute_parallel(tasks: Sequence[Task], workers: int, log: Callable[[str], None], total: int, computed: int) -> SweepResult:
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from tqdm.auto import tqdm

    records: dict[int, Mapping[str, Any]] = {}
    skipped: list[str] = []
    waiting = list(range(len(tasks)))
    running: dict[Any, int] = {}
    t0 = time.time()
    bar = tqdm(total=computed, desc=f"sweep ({workers} workers)", unit="step", dynamic_ncols=True)
    ctx = mp.get_context("spawn")
    manager = ctx.Manager()
    queue = manager.Queue()
    at: dict[int, int] = {}  # latest step of each running task

    def drain() -> None:
        moved = 0
        while not queue.empty():
            i, step = queue.get_nowait()
            moved += 1
            at[i] = step
        if moved:
            bar.update(moved)
            bar.set_postfix_str(", ".join(f"{tasks[i].cfg.name} {at.get(i, tasks[i].branch_step)}/{tasks[i].steps}"
                                          for i in running.values()), refresh=False)

    with manager, ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        while waiting or running:
            for i in list(waiting):
                task = tasks[i]
                parent = task.branch_from
                if parent is not None and parent not in records and not branch_checkpoint(
                        tasks[parent], task.branch_step).exists():
                    continue  # its branch point is not computed yet (a checkpoint appears whole, by rename)
                if len(running) >= workers:
                    break
                waiting.remove(i)
                record, init_from, how = _decide(task, tasks)
                log(f"[{i + 1}/{len(tasks)}] {task.cfg.name}: {task.steps} steps, {how} ({time.time() - t0:.0f} s elapsed)")
                if record is not None:
                    records[i] = record
                    skipped.append(task.cfg.name)
                    bar.update(task.computed_steps)
                    continue
                fut = pool.submit(_worker_train, task.cfg.model_dump_json(), str(init_from) if init_from else None,
                                  list(task.save_at), queue, i)
                running[fut] = i
            if not running:
                if waiting:  # cannot happen: a run only branches from an earlier one
                    raise RuntimeError(f"sweep stalled: {[tasks[i].cfg.name for i in waiting]} wait on unfinished runs")
                continue
            finished, _ = wait(list(running), timeout=0.5, return_when=FIRST_COMPLETED)
            drain()
            for fut in finished:
                i = running.pop(fut)
                records[i] = fut.result()  # a failed run raises here, with its own message
        drain()
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
