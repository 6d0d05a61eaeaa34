"""Sweeps and studies on a Ray cluster: every run of the plan becomes a Ray task.

The scheduler (:func:`replaytune.study.sweep.execute`) stays the one that decides when a run may
start: as soon as the checkpoint it branches from is on disk, while its parent may still be
running. :class:`RayExecutor` only submits each ready :class:`~replaytune.study.sweep.RunTask` as a
Ray task asking for what one run needs (``cpus_per_run`` CPUs, ``gpus_per_run`` GPUs); Ray
places it on any node with those resources free. In the task, :func:`replaytune.study.sweep.run_task`
trains the run in the worker process, or, with ``gpus_per_run`` > 1, starts
``torchrun --standalone --nproc_per_node K`` on that node (Ray sets ``CUDA_VISIBLE_DEVICES``
to the K GPUs it granted; each rank takes ``cuda:LOCAL_RANK`` among them).

Storage
    The run directories (configs, metrics, checkpoints, records) and the token stores are read
    and written by path, from the machine that runs the sweep and from every node: they must
    be on storage every node mounts at the same path (NFS, Lustre, a cluster file system).
    At start a probe task on every node looks for a file the sweep just wrote there and the
    sweep stops with a message naming the nodes that cannot see it.

Faults
    A task whose worker process dies (killed, out of memory, its node lost) is started again by
    Ray, up to ``max_retries`` times. The new attempt continues the run from its last complete
    checkpoint (checkpoints appear whole, by rename), or from its branch point when it died
    before its first one; training resumes exactly, so the sweep's records are the same as an
    uninterrupted sweep's. Errors raised by the run itself are not retried (a bad config fails
    the same way every time), except the ones a lost node can cause: a run directory still
    locked by the dead attempt, an I/O error of the shared storage, a torchrun that failed.
    ``checkpoint.interval`` bounds the steps computed again after a fault.

Ray is imported inside functions only: without it installed, everything else works, and
``--launcher ray`` says which package to install.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from replaytune import rundir
from replaytune.errors import ReplaytuneError
from replaytune.study.sweep.task import Outcome, RunTask, run_task

INSTALL_HINT = "pip install 'replaytune[ray]'"
# errors a lost node or a killed attempt can leave behind; anything else the run raises is its own
RETRY_ON = (rundir.RunLocked, OSError, subprocess.CalledProcessError)
LOCAL_OBJECT_STORE = 256 * 1024**2
LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's local node uses 127.0.0.1  # tasks exchange only small records: a small store is plenty


def require_ray(local: bool = False):
    """The ``ray`` module, or a one-line error naming the install command.

    ``local``: Ray will run on this machine alone (no ``--address``); imported now, its node
    listens and connects on the loopback address, not on the machine's network address.
    """
    if local and "ray" not in sys.modules:
        os.environ.setdefault(LOOPBACK_ONLY, "0")  # read by Ray when imported
    try:
        import ray
    except ImportError:
        raise ReplaytuneError(f"--launcher ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def _check_reachable(address: str) -> None:
    """A HOST:PORT that accepts no connection is reported at once (Ray would retry for a minute)."""
    host, sep, port = address.rpartition(":")
    if address.startswith("ray://") or not sep or not port.isdigit():
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
            pass
    except OSError as exc:
        raise ReplaytuneError(f"--address {address}: no Ray cluster answers there ({exc.strerror or exc}); start one "
                              f"with `ray start --head --port {port}` on {host}, or check the address") from None


def connect(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None) -> bool:
    """Join the Ray cluster at ``address`` ("auto": the one started on this machine with
    ``ray start``), or start a Ray instance on this machine (``None``). Returns whether this
    call started Ray (and so should stop it). An instance already initialized is used as is."""
    ray = require_ray(local=address in (None, "local"))
    if address not in (None, "local", "auto"):
        _check_reachable(address)
    if ray.is_initialized():
        return False
    try:
        if address is None or address == "local":
            ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                     object_store_memory=LOCAL_OBJECT_STORE)
        else:
            ray.init(address=address)
    except ConnectionError as exc:
        where = "on this machine (start one with `ray start --head`)" if address == "auto" else f"at {address}"
        raise ReplaytuneError(f"--address {address}: cannot connect to a Ray cluster {where}: {exc}") from None
    return True


def _sees(path: str, token: str) -> bool:
    try:
        return Path(path).read_text() == token
    except OSError:
        return False


def check_shared_storage(root: Path, timeout: float = 300.0) -> None:
    """Every alive node reads back a file written under ``root`` here, or the sweep stops."""
    ray = require_ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    root.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    probe = root / f".storage-probe-{token[:12]}"
    probe.write_text(token)
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        sees = ray.remote(_sees)
        refs = [sees.options(num_cpus=0, max_retries=1, scheduling_strategy=NodeAffinitySchedulingStrategy(
            node_id=n["NodeID"], soft=False)).remote(str(probe), token) for n in nodes]
        try:
            seen = ray.get(refs, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            raise ReplaytuneError(f"the Ray nodes did not answer the storage check within {timeout:.0f} s") from None
    finally:
        probe.unlink(missing_ok=True)
    blind = [n.get("NodeManagerAddress", n["NodeID"]) for n, ok in zip(nodes, seen) if not ok]
    if blind:
        raise ReplaytuneError(f"{root} is not visible from the Ray node(s) {', '.join(blind)}: the run directories "
                              f"must be on storage every node mounts at the same path (a shared file system)")


def _ray_run(job: RunTask, threads: int) -> Outcome:
    """The body of one Ray task (in a worker process of some node)."""
    return run_task(job, threads=threads)


class RayExecutor:
    """Each run a Ray task; see the module's docstring.

    Args:
        address: a cluster to join ("auto", "HOST:PORT"); None starts Ray on this machine
            (or uses the instance this process already initialized).
        gpus_per_run: GPUs each run asks for; above 1 the run is started with torchrun, one
            process per GPU.
        cpus_per_run: CPUs each run asks for; an in-process run uses as many torch threads
            (results depend on the thread count: keep it fixed to compare sweeps bit for bit).
        max_retries: times a run's task is started again after its worker died.
        max_running: runs submitted at once (None: as many as are ready; Ray queues what does
            not fit the cluster).
        check_storage: run the shared-storage probe at start.
    """

    def __init__(self, address: str | None = None, *, gpus_per_run: int = 0, cpus_per_run: int = 1,
                 max_retries: int = 3, max_running: int | None = None, check_storage: bool = True):
        if gpus_per_run < 0 or cpus_per_run < 1 or max_retries < 0:
            raise ReplaytuneError("--gpus-per-run and --max-retries must be >= 0, --cpus-per-run >= 1")
        self.address = address
        self.gpus = gpus_per_run
        self.cpus = cpus_per_run
        self.max_retries = max_retries
        self.max_running = max_running or 1 << 30
        self.check_storage = check_storage
        self.label = "sweep (ray)"
        self._names: dict[Any, str] = {}
        self._owns = False

    def start(self, root: Path, on_step: Callable[[int, int], None]) -> None:
        ray = require_ray()
        self._owns = connect(self.address)
        if self.check_storage:
            check_shared_storage(root)
        self._remote = ray.remote(_ray_run).options(
            num_cpus=self.cpus, num_gpus=self.gpus, max_retries=self.max_retries, retry_exceptions=list(RETRY_ON))

    def submit(self, job: RunTask) -> Any:
        if self.gpus > 1:
            job = replace(job, procs=self.gpus)
        ref = self._remote.remote(job, self.cpus)
        self._names[ref] = job.name
        return ref

    def wait(self, handles: list[Any], timeout: float) -> list[Any]:
        ray = require_ray()
        done, _ = ray.wait(handles, num_returns=1, timeout=timeout)
        return done

    def outcome(self, handle: Any) -> Outcome:
        ray = require_ray()
        name = self._names.pop(handle, "a run")
        try:
            return ray.get(handle)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None) or exc
            if isinstance(cause, ReplaytuneError):
                raise type(cause)(f"{name}: {cause}") from None
            raise ReplaytuneError(f"{name} failed in its Ray task: {type(cause).__name__}: {cause}") from None
        except ray.exceptions.RayError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            n = self.max_retries + 1
            raise ReplaytuneError(f"{name}: its Ray task was lost ({n} attempt{'s' * (n > 1)}; {first}); start the "
                                  f"sweep again to continue it from its last checkpoint") from None

    def close(self) -> None:
        ray = require_ray()
        for ref in list(self._names):  # still running: a failed sweep stops its other runs
            ray.cancel(ref, force=True)
        self._names.clear()
        if self._owns:
            ray.shutdown()
            self._owns = False
