"""RunLock under contention: several processes, many rounds, never two holders at once."""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import pytest

from replaytune import rundir

WORKERS = 6
ROUNDS = 40


def _contend(run_dir: str, log: str, rounds: int, seed: int) -> int:
    """Take the lock ``rounds`` times (retrying when refused); log enter/exit while holding it."""
    import random

    rng = random.Random(seed)
    pid = os.getpid()
    held = 0
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    try:
        while held < rounds:
            lock = rundir.RunLock(run_dir)
            try:
                lock.acquire()
            except rundir.RunLocked:
                continue  # spin: the contention is at the release
            try:
                os.write(fd, f"enter {pid}\n".encode())
                if rng.random() < 0.5:
                    time.sleep(rng.random() * 1e-4)
                os.write(fd, f"exit {pid}\n".encode())
            finally:
                lock.release()
            held += 1
    finally:
        os.close(fd)
    return held


@pytest.mark.parametrize("existing", [True, False], ids=["dir-exists", "lock-makes-dir"])
def test_processes_contending_never_hold_the_lock_together(tmp_path, existing):
    run = tmp_path / "run"
    if existing:
        run.mkdir()
    log = tmp_path / "holders.log"
    log.touch()
    ctx = mp.get_context("spawn")
    with ctx.Pool(WORKERS) as pool:
        counts = pool.starmap(_contend, [(str(run), str(log), ROUNDS, i) for i in range(WORKERS)])
    assert counts == [ROUNDS] * WORKERS
    lines = log.read_text().splitlines()
    assert len(lines) == 2 * WORKERS * ROUNDS
    holder = None
    for i, line in enumerate(lines):  # O_APPEND writes: the file's order is the order they happened in
        kind, pid = line.split()
        if kind == "enter":
            assert holder is None, f"line {i}: {pid} entered while {holder} held the lock"
            holder = pid
        else:
            assert holder == pid, f"line {i}: {pid} left, but the holder was {holder}"
            holder = None
    assert not (run / rundir.LOCK).exists()
    if existing:
        assert run.is_dir() and not any(run.iterdir())
    else:  # the lock that made it removes it unless another holder's lock was in it then: empty at most
        assert not run.exists() or not any(run.iterdir())


def test_a_lock_whose_file_was_unlinked_is_not_kept(tmp_path):
    """The acquirer's check: a lock on a file no longer at the path is let go and the path's file is locked."""
    import fcntl

    run = tmp_path / "run"
    run.mkdir()
    stale = os.open(run / rundir.LOCK, os.O_RDWR | os.O_CREAT)
    os.unlink(run / rundir.LOCK)  # a releaser unlinked it after this process opened it
    lock = rundir.RunLock(run)
    assert not lock._is_current(stale)
    with lock:
        assert lock._is_current(lock._fd)
        other = os.open(run / rundir.LOCK, os.O_RDWR)
        with pytest.raises(BlockingIOError):  # the file at the path is the locked one
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(other)
    os.close(stale)
