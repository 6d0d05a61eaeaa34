"""Sweeps: grid expansion (pure), prefix-sharing plan, tasks, and the scheduler that runs them.

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

Tasks and executors
    The plan (:func:`build_tasks`) gives :class:`Task` objects; when a task may start (its
    branch checkpoint exists) the scheduler, :func:`execute`, turns it into a
    :class:`RunTask` (plain data) and hands it to an executor, which runs it with
    :func:`run_task`. Executors: one run after another in this process
    (:class:`InlineExecutor`, through a launcher: :class:`LocalLauncher` in-process,
    :class:`TorchrunLauncher` under ``torchrun``), local worker processes
    (:class:`ProcessExecutor`, ``--workers N``), or a Ray cluster
    (:class:`replaytune.cluster.RayExecutor`, ``--launcher ray``). All share the same
    scheduling; at the same torch thread count per run they give the same records, bit for bit.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
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


# --------------------------------------------------------------------------------------
# From the plan to tasks: what one run needs to start anywhere
# --------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class RunTask:
    """One run of a sweep, ready to start: plain data, the same for every executor.

    The scheduler (:func:`execute`) makes it from a planned :class:`Task` once the run may
    start (its branch checkpoint is on disk); an executor runs it with :func:`run_task`
    wherever it likes: in this process, in a local worker process, or in a Ray task on
    another node. It holds paths and strings only, so it pickles, and any machine that
    sees the same storage can run it. Running it twice is harmless: a second start
    continues from the run directory's last checkpoint, or returns the finished record.
    """

    index: int
    name: str
    config_json: str  # the resolved run config; its out_dir is run_dir
    run_dir: str
    init_from: str | None = None  # the checkpoint of another run this one branches from
    save_at: tuple[int, ...] = ()  # steps to checkpoint and keep: later runs branch from them
    procs: int | None = None  # None: train in the calling process; N: under torchrun, N processes
    torchrun_args: tuple[str, ...] = ()  # extra torchrun flags (--nnodes, --rdzv_endpoint, ...)

    def config(self) -> RunConfig:
        return RunConfig.model_validate_json(self.config_json)

    def start_step(self) -> int:
        """The step a start now would begin at: the last checkpoint, else the branch point, else 0."""
        done = rundir.checkpoint_steps(self.run_dir)
        if done:
            return done[-1]
        if self.init_from is not None:
            return rundir.step_of(Path(self.init_from).name) or 0
        return 0


@dataclass(eq=False)  # a handle of the in-process executor: hashed by identity
class Outcome:
    """What a finished task reports: its record, and the step its successful attempt began at."""

    record: Mapping[str, Any]
    started_at: int | None = None  # None: unknown, or the run had finished before this start


TORCHRUN_CONFIG = "sweep-config.yaml"  # the resolved config a torchrun'd run reads, in its run directory


def torchrun_command(job: RunTask) -> list[str]:
    """``python -m torch.distributed.run ... -m replaytune.cli train CONFIG --resume [...]`` for ``job``.

    The interpreter running this is the one torchrun starts (on a Ray node, the worker's own
    environment). Without rendezvous flags in ``job.torchrun_args`` the run is one node's
    (``--standalone``: a free port per run, so runs sharing a node do not collide).
    """
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    if not any(a.startswith(("--nnodes", "--rdzv", "--master")) for a in job.torchrun_args):
        cmd.append("--standalone")
    cmd += [f"--nproc_per_node={job.procs or 1}", *job.torchrun_args, "-m", "replaytune.cli", "train",
            str(Path(job.run_dir) / TORCHRUN_CONFIG), "--resume"]
    if job.init_from is not None:
        cmd += ["--init-from", job.init_from]
    if job.save_at:
        cmd += ["--save-at", ",".join(str(s) for s in job.save_at)]
    return cmd


def run_task(job: RunTask, *, threads: int | None = None, progress: bool = False,
             callbacks: Sequence[Callable[[Any], None]] = ()) -> Outcome:
    """Run ``job`` to completion here; every executor's worker calls this.

    A started run continues from its last checkpoint, or (killed before one) starts again from
    its branch point: the loop prefers a checkpoint to ``init_from``. ``threads`` sets torch's
    thread count (results depend on it: the executors fix it per run); under torchrun the
    processes share them (``OMP_NUM_THREADS``).
    """
    run_dir = Path(job.run_dir)
    started = None if rundir.is_finished(run_dir) else job.start_step()
    if job.procs is None:
        from replaytune.train import train

        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        record = train(job.config(), resume=rundir.is_started(run_dir), init_from=job.init_from,
                       save_at=job.save_at, progress=progress, callbacks=list(callbacks))
        return Outcome(record, started)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / TORCHRUN_CONFIG, cfgmod.dump_yaml(job.config()))
    cmd = torchrun_command(job)
    env = dict(os.environ)
    if threads is not None:  # the run's CPUs, shared by its processes
        env["OMP_NUM_THREADS"] = str(max(1, threads // (job.procs or 1)))
    print("+", shlex.join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, env=env)
    return Outcome(rundir.read_record(run_dir), started)


# --------------------------------------------------------------------------------------
# Launchers: how one run is started by the in-process executor
# --------------------------------------------------------------------------------------


class Launcher(Protocol):
    def launch(self, job: RunTask) -> Outcome | Mapping[str, Any]:
        """Run ``job`` to completion; return its outcome (or just its record)."""


class LocalLauncher:
    """Runs each task in this process through :func:`replaytune.train.loop.train`."""

    def __init__(self, progress: bool = True, callbacks: Sequence[Callable[[Any], None]] = ()):
        self.progress = progress
        self.callbacks = list(callbacks)

    def launch(self, job: RunTask) -> Outcome:
        return run_task(job, progress=self.progress, callbacks=self.callbacks)


class TorchrunLauncher:
    """Runs each task as ``torchrun --nproc_per_node N -m replaytune.cli train ...``.

    The resolved config is written to the run directory first; the command line is the
    same one a cluster job script would run on each node (add ``--nnodes``, ``--node_rank``
    and ``--rdzv_endpoint`` through ``extra``).
    """

    def __init__(self, nproc_per_node: int = 1, extra: Sequence[str] = ()):
        self.nproc = nproc_per_node
        self.extra = tuple(extra)

    def _job(self, job: RunTask) -> RunTask:
        return replace(job, procs=self.nproc, torchrun_args=self.extra)

    def command(self, job: RunTask) -> list[str]:
        return torchrun_command(self._job(job))

    def launch(self, job: RunTask) -> Outcome:
        return run_task(self._job(job))


# --------------------------------------------------------------------------------------
# The scheduler and the local executors
# --------------------------------------------------------------------------------------


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


class Executor(Protocol):
    """Where tasks run. :func:`execute` decides when each may start; an executor starts it and
    reports back. ``max_running``: tasks handed to it at once."""

    label: str
    max_running: int

    def start(self, root: Path, on_step: Callable[[int, int], None]) -> None:
        """Get ready; ``root`` holds the run directories; call ``on_step(index, step)`` per update if it can."""

    def submit(self, job: RunTask) -> Any:
        """Start ``job``; return a handle."""

    def wait(self, handles: list[Any], timeout: float) -> list[Any]:
        """The handles that finished (none if ``timeout`` seconds pass first)."""

    def outcome(self, handle: Any) -> Outcome:
        """A finished task's outcome; raises the run's own error if it failed."""

    def close(self) -> None:
        """Release workers (tasks still running are stopped)."""


def _as_outcome(value: Outcome | Mapping[str, Any]) -> Outcome:
    return value if isinstance(value, Outcome) else Outcome(value)


class InlineExecutor:
    """One task at a time in this process, through a :class:`Launcher` (default: :class:`LocalLauncher`)."""

    label = "sweep"
    max_running = 1

    def __init__(self, launcher: Launcher | None = None):
        self.launcher = launcher

    def start(self, root: Path, on_step: Callable[[int, int], None]) -> None:
        if self.launcher is None:
            self.launcher = LocalLauncher(callbacks=[lambda trainer: on_step(self._index, trainer.step)])
        self._index = -1

    def submit(self, job: RunTask) -> Outcome:
        self._index = job.index
        assert self.launcher is not None
        return _as_outcome(self.launcher.launch(job))  # runs it now; the handle is its outcome

    def wait(self, handles: list[Any], timeout: float) -> list[Any]:
        return list(handles)

    def outcome(self, handle: Outcome) -> Outcome:
        return handle

    def close(self) -> None:
        pass


def _process_worker(job: RunTask, queue: Any, threads: int = 1) -> Outcome:
    """Entry point of a local worker process (spawned: no state shared with the parent).

    Each completed update puts ``(index, step)`` on ``queue`` for the parent's progress bar.
    """
    return run_task(job, threads=threads, callbacks=[lambda trainer: queue.put((job.index, trainer.step))])


class ProcessExecutor:
    """``workers`` local processes, ``threads`` torch threads each (default one).

    On 2 cores two single-threaded processes train tiny models faster than one process with
    two threads (BENCHMARKS.md). Floating-point results depend on the thread count (the order
    of the sums), so a sweep is bit-reproducible for fixed ``workers`` and ``threads``; another
    thread count runs the same experiment with other rounding.
    """

    def __init__(self, workers: int, threads: int = 1):
        if workers < 1 or threads < 1:
            raise ConfigError(f"workers and threads must be >= 1, got workers={workers}, threads={threads}")
        self.max_running = workers
        self.threads = threads
        self.label = f"sweep ({workers} workers" + (f", {threads} threads each)" if threads > 1 else ")")

    def start(self, root: Path, on_step: Callable[[int, int], None]) -> None:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        ctx = mp.get_context("spawn")
        self.on_step = on_step
        self.manager = ctx.Manager()
        self.queue = self.manager.Queue()
        self.pool = ProcessPoolExecutor(max_workers=self.max_running, mp_context=ctx)

    def submit(self, job: RunTask) -> Any:
        return self.pool.submit(_process_worker, job, self.queue, self.threads)

    def _drain(self) -> None:
        while not self.queue.empty():
            self.on_step(*self.queue.get_nowait())

    def wait(self, handles: list[Any], timeout: float) -> list[Any]:
        from concurrent.futures import FIRST_COMPLETED, wait

        done, _ = wait(handles, timeout=timeout, return_when=FIRST_COMPLETED)
        self._drain()
        return list(done)

    def outcome(self, handle: Any) -> Outcome:
        return handle.result()  # a failed run raises here, with its own message

    def close(self) -> None:
        if getattr(self, "pool", None) is None:
            return  # never started
        self.pool.shutdown(wait=True, cancel_futures=True)
        self._drain()
        self.manager.shutdown()
        self.pool = None


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
    :class:`replaytune.cluster.RayExecutor`. The scheduling is the same for all: a run starts
    as soon as the checkpoint it branches from exists (the parent may still be running: the
    demo's first run would otherwise hold the second core idle for its whole length), a run
    finished earlier is skipped, a half-done one resumes.
    """
    total = sum(t.steps for t in tasks)
    computed = sum(t.computed_steps for t in tasks)
    if executor is None:
        executor = ProcessExecutor(workers) if workers > 1 and launcher is None else InlineExecutor(launcher)
    show = launcher is None  # a launcher given by the caller reports (or not) on its own
    return _schedule(tasks, executor, log, total, computed, show)


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
