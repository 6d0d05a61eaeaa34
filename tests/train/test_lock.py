"""One writer per run directory: a second one is refused with the holder named; a stale lock
from a killed process does not block a resume."""

from __future__ import annotations

import os
import socket

import pytest

from .helpers import tiny_config
from replaytune import rundir
from replaytune.errors import ReplaytuneError
from replaytune.train import train


def test_a_second_writer_is_refused_naming_the_holder(stores, tmp_path):
    run = tmp_path / "run"
    with rundir.RunLock(run):  # a live holder (this process, through its own open file)
        with pytest.raises(ReplaytuneError) as e:
            train(tiny_config(stores, run))
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in str(e.value)
        assert not (run / rundir.METRICS).exists()  # the refused writer wrote nothing
    assert not run.exists()  # the lock made the folder and nothing else was written: removed


def test_a_stale_lock_file_does_not_block(stores, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / rundir.LOCK).write_text("pid 999999 on host gone\n")  # left by a killed process: no flock held
    record = train(tiny_config(stores, run))
    assert record["steps"] == 20 and not (run / rundir.LOCK).exists()
