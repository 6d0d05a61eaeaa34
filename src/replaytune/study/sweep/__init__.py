"""Sweeps: many runs of one grid, sharing identical prefixes, on any executor.

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
    (:class:`~replaytune.study.sweep.ray.RayExecutor`, ``--launcher ray``). All share the same
    scheduling; at the same torch thread count per run they give the same records, bit for bit.

One idea a module: :mod:`.grid` (the sweep file and its grid), :mod:`.plan` (prefix sharing and
tasks), :mod:`.task` (one run as plain data, how a worker runs it, launchers),
:mod:`.executors` (in-process, local processes), :mod:`.scheduler` (when a task starts, the
log, the summary) and :mod:`.ray` (Ray). The names below are the package's interface.
"""

from replaytune.study.sweep.executors import Executor, InlineExecutor, ProcessExecutor
from replaytune.study.sweep.grid import expand_grid, load_sweep, run_key
from replaytune.study.sweep.plan import Task, build_tasks, common_prefix, plan
from replaytune.study.sweep.scheduler import SweepResult, branch_checkpoint, execute, write_summary
from replaytune.study.sweep.task import (
    TORCHRUN_CONFIG, Launcher, LocalLauncher, Outcome, RunTask, TorchrunLauncher, run_task, torchrun_command,
)

__all__ = [
    "Executor", "InlineExecutor", "Launcher", "LocalLauncher", "Outcome", "ProcessExecutor", "RunTask", "SweepResult",
    "TORCHRUN_CONFIG", "Task", "TorchrunLauncher", "branch_checkpoint", "build_tasks", "common_prefix", "execute",
    "expand_grid", "load_sweep", "plan", "run_key", "run_task", "torchrun_command", "write_summary",
]
