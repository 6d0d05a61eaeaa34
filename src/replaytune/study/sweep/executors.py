"""Where a sweep's tasks run: the executor protocol, in this process, or in local worker processes.

When a task may start is decided by the scheduler (:mod:`~replaytune.study.sweep.scheduler`);
an executor only starts what it is handed and reports back. Ray: :mod:`~replaytune.study.sweep.ray`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Protocol


from replaytune.errors import ConfigError
from replaytune.study.sweep.task import Launcher, LocalLauncher, Outcome, RunTask, run_task


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


class _Stopped(KeyboardInterrupt):
    """SIGTERM in a worker: unwinds the run like Ctrl-C, so it releases its run folder's lock."""


def _worker_started() -> None:
    import signal

    def stop(signum, frame):
        raise _Stopped()

    signal.signal(signal.SIGTERM, stop)


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
        self.pool = ProcessPoolExecutor(max_workers=self.max_running, mp_context=ctx, initializer=_worker_started)
        self.futures: list[Any] = []

    def submit(self, job: RunTask) -> Any:
        future = self.pool.submit(_process_worker, job, self.queue, self.threads)
        self.futures.append(future)
        return future

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
        if any(not f.done() for f in self.futures):
            # closed with runs still going (a failed run, Ctrl-C, SIGTERM): stop the workers now;
            # each run resumes from its last checkpoint when the sweep is started again. The pool
            # has no public handle on its processes, hence _processes.
            procs = list((getattr(self.pool, "_processes", None) or {}).values())
            for proc in procs:
                proc.terminate()  # SIGTERM: the run unwinds and releases its lock (_worker_started)
            for proc in procs:
                proc.join(timeout=10)
                if proc.is_alive():
                    proc.kill()
            self.pool.shutdown(wait=False, cancel_futures=True)
        else:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self._drain()
        self.manager.shutdown()
        self.pool = None
