"""One run of a sweep as plain data (:class:`RunTask`), how a worker runs it, and the launchers.

Every executor hands the same :class:`RunTask` to :func:`run_task`; a launcher starts it in this
process (:class:`LocalLauncher`) or under torchrun (:class:`TorchrunLauncher`).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence


from replaytune import config as cfgmod
from replaytune import rundir
from replaytune.config import RunConfig
from replaytune.fsio import write_text


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


# Launchers: how one run is started by the in-process executor


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
