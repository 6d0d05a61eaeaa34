"""The layout of a run directory, and the two questions asked of it: finished? resumable?

One run of the training loop writes into ``out_dir``::

    config.yaml                   the resolved run config (written at the start)
    metrics.jsonl                 a line per logged step and per evaluation
    checkpoints/step-00001234/    complete checkpoints (state.json written inside, then renamed)
    model/                        save_pretrained output
    record.json                   written last: its presence means the run finished

and, with ``report_to`` (replaytune.trackers)::

    trackers.json                 the W&B and MLflow run ids, continued by a resumed run
    tb/                           TensorBoard event files
    wandb/                        W&B's run files (unless $WANDB_DIR says elsewhere)
    mlflow.db                     MLflow's SQLite store (unless $MLFLOW_TRACKING_URI says elsewhere)

Every module that reads or writes these paths takes the names from here (the loop, the
checkpoint code, the sweep executor, the study, the report, the fine-tuning command), so a
change of layout is a change of this file. Nothing here imports torch.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from replaytune.errors import ReplaytuneError

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
RECORD = "record.json"
CHECKPOINTS = "checkpoints"
MODEL = "model"
STATE = "state.json"  # inside a checkpoint folder: written before the folder is renamed into place
TRACKERS = "trackers.json"
TENSORBOARD = "tb"
MLFLOW_DB = "mlflow.db"

_STEP = re.compile(r"^step-(\d{8})$")


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def step_of(name: str) -> int | None:
    """The step of a checkpoint folder name, or None for anything else (temporaries too)."""
    m = _STEP.match(name)
    return int(m.group(1)) if m else None


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / step_name(step)


def checkpoint_steps(run_dir: str | Path) -> list[int]:
    """Steps of the complete checkpoints of a run, ascending."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    steps = [step_of(p.name) for p in root.iterdir()]
    return sorted(s for s in steps if s is not None and (root / step_name(s) / STATE).is_file())


def is_finished(run_dir: str | Path) -> bool:
    """The run wrote its record (the loop writes record.json last)."""
    return (Path(run_dir) / RECORD).is_file()


def is_started(run_dir: str | Path) -> bool:
    """Something of a run is on disk (it may have been killed before its first checkpoint)."""
    p = Path(run_dir)
    return any((p / name).exists() for name in (CONFIG, METRICS, CHECKPOINTS, RECORD))


def is_resumable(run_dir: str | Path) -> bool:
    """Not finished, and at least one complete checkpoint to continue from."""
    return not is_finished(run_dir) and bool(checkpoint_steps(run_dir))


def read_record(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / RECORD).read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------
# One writer per run directory
# ------------------------------------------------------------------------------------------

LOCK = ".lock"


class RunLocked(ReplaytuneError):
    """Another live process holds the run directory (message: who, and what to do)."""


class RunLock:
    """An exclusive lock on a run directory while one process trains in it.

    ``flock`` on ``run_dir/.lock`` (non-blocking): the kernel drops it when the holder exits,
    however it exits, so a killed run never leaves a lock that blocks its ``--resume``. The
    file names the holder (pid, host) for the message a second writer gets. Released on
    exit; the file is removed, and so is the directory if this lock created it and nothing
    else was written (a run refused before it started leaves nothing behind).

    The holder unlinks the file while it still holds the flock, and an acquirer keeps the lock
    only if the file it locked is still the one at the path (same device and inode); otherwise
    it locked a file a releaser had just unlinked, and tries again. Without that check a
    process waiting on the old inode and one creating a new file could both hold "the" lock.
    """

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.path = self.dir / LOCK
        self._fd: int | None = None
        self._created = False

    def acquire(self) -> "RunLock":
        import fcntl
        import os
        import socket

        self._created = False
        while True:
            self._created = self._created or not self.dir.exists()
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except (FileNotFoundError, FileExistsError):  # a releaser removed the (empty) directory meanwhile
                if self.dir.exists() and not self.dir.is_dir():
                    raise
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise RunLocked(f"{self.dir} is in use by {holder}; wait for it to finish (or stop it), "
                                f"or choose another output directory") from None
            if self._is_current(fd):
                break
            os.close(fd)  # locked a file its holder unlinked on release: lock the one at the path now
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def _is_current(self, fd: int) -> bool:
        """Whether the open file ``fd`` is the file at ``self.path`` (not one unlinked since it was opened)."""
        import os

        try:
            at_path = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (mine.st_dev, mine.st_ino) == (at_path.st_dev, at_path.st_ino)

    def release(self) -> None:
        import os

        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still locked: an acquirer of this inode sees it gone
        finally:
            os.close(self._fd)  # closing drops the flock
            self._fd = None
        if self._created:
            try:
                self.dir.rmdir()  # only when empty: this lock made it and nothing was written
            except OSError:
                pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
