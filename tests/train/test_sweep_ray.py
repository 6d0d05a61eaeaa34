"""Sweeps on Ray: a local Ray instance (CPU, loopback only) runs the same plan as the local
executor and gives the same records bit for bit, also when a worker is killed mid-run."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from .helpers import strip_timing
from .test_sweep_resume import _leftovers
from .test_sweep_study import _study
from replaytune import cli, rundir
from replaytune.study import runs as study
from replaytune.study import sweep
from replaytune.errors import ReplaytuneError
from replaytune.train import read_metrics

FT = {"epochs": 4, "replay": [0.0, 0.5], "lrs": [1e-3]}
TIMING = ("wall_time_s", "train_time_s", "tokens_per_s")


def _configs(stores):
    """Fine-tuning at two rho x two seeds: the seeds of one rho share all of pre-training, the two
    rho share its stable part; a checkpoint every 8 steps gives a killed run something to resume."""
    runs = study.build_runs(_study(stores, midtrain=None, reference=None, seeds=[0, 1], finetune=FT))
    return [c.model_copy(update={"checkpoint": c.checkpoint.model_copy(update={"interval": 8})}) for _, c in runs]


def _everything(tasks):
    """Per run: record.json (less timing and where it was written), metrics.jsonl lines (less
    timing), final losses and the bytes of the final weights."""
    out = []
    for t in tasks:
        rec = rundir.read_record(t.run_dir)
        rec = {k: v for k, v in rec.items() if k not in TIMING}
        rec["config"] = {k: v for k, v in rec["config"].items() if k != "out_dir"}
        rec["fingerprints"] = {k: v for k, v in rec["fingerprints"].items() if k != "config"}  # hashes out_dir too
        weights = sorted((p.name, hashlib.sha256(p.read_bytes()).hexdigest())
                         for p in (t.run_dir / rundir.MODEL).glob("*.safetensors"))
        assert weights, t.run_dir
        out.append((t.cfg.name, rec, strip_timing(read_metrics(t.run_dir)), rec["final"], weights))
    return out


@pytest.fixture(scope="module")
def ray_local():
    """A Ray instance on this machine: 2 CPUs, no dashboard, a small object store (records only)."""
    ray = pytest.importorskip("ray")
    # short: Ray's socket paths under the temp dir must stay below 108 bytes
    tmp = tempfile.mkdtemp(prefix="rt-ray-", dir="/tmp")
    store = 200 * 1024**2
    kw = {}
    shm = Path("/dev/shm")
    if not shm.is_dir() or shutil.disk_usage(shm).free < 2 * store:
        kw["_plasma_directory"] = tmp  # a small /dev/shm: keep the object store in the temp dir
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=store, _temp_dir=tmp,
             log_to_driver=False, **kw)
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}  # loopback only (tests/conftest.py)
    yield ray
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def local_sweep(stores, tmp_path_factory):
    """The same sweep by the default executor: one run after another in this process, one thread."""
    import torch

    assert torch.get_num_threads() == 1  # the Ray tasks train with one thread too (cpus_per_run=1)
    tasks = sweep.build_tasks(_configs(stores), tmp_path_factory.mktemp("local") / "runs")
    sweep.execute(tasks, sweep.LocalLauncher(progress=False))
    return tasks


def test_ray_sweep_with_prefix_sharing_matches_the_local_executor(ray_local, local_sweep, stores, tmp_path):
    from replaytune.study.sweep.ray import RayExecutor

    tasks = sweep.build_tasks(_configs(stores), tmp_path / "runs")
    assert sum(t.branch_from is not None for t in tasks) == 3 and any(t.branch_step < 36 for t in tasks[1:])
    lines: list[str] = []
    res = sweep.execute(tasks, executor=RayExecutor(), log=lines.append)
    assert res.computed_steps < res.total_steps and res.skipped == []
    assert [t.run_dir.name for t in tasks] == [t.run_dir.name for t in local_sweep]
    assert _everything(tasks) == _everything(local_sweep)
    assert sum("branching at step" in line for line in lines) == 3
    assert not any("retried" in line for line in lines)
    assert _leftovers(tmp_path / "runs") == [] and not list((tmp_path / "runs").glob(".storage-probe-*"))
    # a second call finds every run finished: nothing is submitted
    again = sweep.execute(sweep.build_tasks(_configs(stores), tmp_path / "runs"), executor=RayExecutor())
    assert len(again.skipped) == len(tasks)


def _trainer(run_dir: Path, stop: threading.Event) -> int | None:
    """The pid of the process training in ``run_dir`` once it holds a checkpoint and is not done
    (read from the run's lock: "pid N on host H"); None if ``stop`` is set first."""
    while not stop.is_set():
        lock = run_dir / rundir.LOCK
        if rundir.checkpoint_steps(run_dir) and not rundir.is_finished(run_dir) and lock.is_file():
            try:
                return int(lock.read_text().split()[1])
            except (OSError, IndexError, ValueError):
                continue  # being written
        time.sleep(0.002)
    return None


def _kill_after_first_checkpoint(run_dir: Path, killed: dict, stop: threading.Event) -> None:
    """SIGKILL the process that trains in ``run_dir`` once it holds a checkpoint and is not done."""
    pid = _trainer(run_dir, stop)
    if pid is None:
        return
    if pid == os.getpid():
        killed["error"] = "the run trains in the test process, not in a Ray worker"
        return
    try:
        killed["cmdline"] = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        pass
    killed["at"] = rundir.checkpoint_steps(run_dir)[-1]
    os.kill(pid, signal.SIGKILL)
    killed["pid"] = pid


def _sweep_while(tasks, act, stop: threading.Event, **executor) -> list[str]:
    """Run ``tasks`` on Ray while ``act()`` runs in a thread (it waits for its moment on ``stop``);
    the sweep's log lines."""
    from replaytune.study.sweep.ray import RayExecutor

    killer = threading.Thread(target=act, daemon=True)
    killer.start()
    lines: list[str] = []
    try:
        sweep.execute(tasks, executor=RayExecutor(**executor), log=lines.append)
    finally:
        stop.set()
        killer.join()
    return lines


def test_a_killed_ray_worker_is_retried_and_the_sweep_ends_identical(ray_local, local_sweep, stores, tmp_path):

    tasks = sweep.build_tasks(_configs(stores), tmp_path / "runs")
    root = tasks[0]  # every other run branches from it
    killed: dict = {}
    stop = threading.Event()
    lines = _sweep_while(tasks, lambda: _kill_after_first_checkpoint(root.run_dir, killed, stop), stop, max_retries=2)
    assert "error" not in killed and "pid" in killed, killed
    assert "ray" in killed.get("cmdline", "ray")  # a Ray worker process died, not something else
    # the retried task continued from a checkpoint, not from step 0
    resumed = [line for line in lines if line.startswith(f"{root.cfg.name}: ") and "retried" in line]
    assert len(resumed) == 1, lines
    step = int(resumed[0].rsplit(" ", 1)[1])
    assert 8 <= step <= killed["at"] + 8 and step % 8 == 0
    assert _everything(tasks) == _everything(local_sweep)
    assert _leftovers(tmp_path / "runs") == []


def test_without_retries_a_killed_run_fails_the_sweep_with_a_clear_message(ray_local, stores, tmp_path):
    from replaytune.study.sweep.ray import RayExecutor

    tasks = sweep.build_tasks(_configs(stores)[:1], tmp_path / "runs")
    killed: dict = {}
    stop = threading.Event()
    killer = threading.Thread(target=_kill_after_first_checkpoint, args=(tasks[0].run_dir, killed, stop), daemon=True)
    killer.start()
    try:
        with pytest.raises(ReplaytuneError, match=r"Ray task was lost \(1 attempt;.*start the sweep again"):
            sweep.execute(tasks, executor=RayExecutor(max_retries=0), log=lambda line: None)
    finally:
        stop.set()
        killer.join()
    assert "pid" in killed and rundir.is_resumable(tasks[0].run_dir)


def test_launcher_ray_errors_name_the_fix(stores, tmp_path, monkeypatch, capsys):
    import socket

    from replaytune.study.sweep.ray import connect

    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text("base: {name: x}\ngrid: {}\n")
    import importlib

    try:  # loaded first, so that the context below puts this very module back
        importlib.import_module("ray")
    except ImportError:
        pass
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "ray", None)  # as if Ray were not installed
        assert cli.main(["sweep", str(sweep_file), "--launcher", "ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install 'replaytune[ray]'" in err
    assert cli.main(["sweep", str(sweep_file), "--address", "auto"]) == 2
    assert "--address goes with --launcher ray" in capsys.readouterr().err
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pytest.importorskip("ray")
    t0 = time.time()
    with pytest.raises(ReplaytuneError, match=rf"--address 127.0.0.1:{port}: no Ray cluster answers there"):
        connect(f"127.0.0.1:{port}")
    assert time.time() - t0 < 10


def test_a_multi_process_run_starts_under_torchrun_and_branches(stores, local_sweep, tmp_path):
    """What a Ray task does for --gpus-per-run 2 (torchrun with 2 processes on its node), here
    with gloo on CPU: the run branches from its parent's checkpoint and logs the losses of the
    same run in one process (to float tolerance: gradients are summed over ranks)."""
    from dataclasses import replace

    from .test_distributed import _assert_close

    tasks = sweep.build_tasks(_configs(stores), tmp_path / "runs")
    child, parent = tasks[1], local_sweep[tasks[1].branch_from]
    job = replace(child.job(sweep.branch_checkpoint(parent, child.branch_step)), procs=2)
    cmd = sweep.torchrun_command(job)
    assert cmd[:4] == [sys.executable, "-m", "torch.distributed.run", "--standalone"] and "--nproc_per_node=2" in cmd
    out = sweep.run_task(job)
    assert out.started_at == child.branch_step and out.record["final"]["eval"].keys() == {"target", "generic"}
    _assert_close(read_metrics(child.run_dir), read_metrics(local_sweep[1].run_dir))


def test_flags_map_onto_the_ray_executor(tmp_path):
    from replaytune.study.sweep.ray import RayExecutor
    from replaytune.commands import make_executor
    from replaytune.errors import ConfigError

    pytest.importorskip("ray")
    parser = cli.build_parser()
    args = parser.parse_args(["study", "s.yaml", "--launcher", "ray", "--address", "auto", "--gpus-per-run", "2",
                              "--cpus-per-run", "4", "--max-retries", "5", "--workers", "3"])
    ex = make_executor(args)
    assert isinstance(ex, RayExecutor)
    assert (ex.address, ex.gpus, ex.cpus, ex.max_retries, ex.max_running) == ("auto", 2, 4, 5, 3)
    assert make_executor(parser.parse_args(["sweep", "s.yaml"])) is None  # local stays the default
    with pytest.raises(ConfigError, match="--gpus-per-run K"):
        make_executor(parser.parse_args(["sweep", "s.yaml", "--launcher", "ray", "--torchrun"]))

    submitted = []

    class Remote:  # stands in for the Ray remote function: what would be sent to the cluster
        def remote(self, job, threads):
            submitted.append((job, threads))
            return object()

    ex._remote = Remote()
    job = sweep.RunTask(0, "r", "{}", str(tmp_path / "r"))
    ex.submit(job)
    assert submitted == [(job.__class__(0, "r", "{}", str(tmp_path / "r"), procs=2), 4)]  # torchrun, 2 processes


def _ppid(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("PPid:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@pytest.mark.slow
def test_a_lost_node_of_a_two_raylet_cluster_is_retried_on_the_other_and_the_sweep_ends_identical(
        local_sweep, stores, tmp_path, monkeypatch):
    """Multi-node in miniature: a head with no CPUs for runs and two worker raylets of 1 CPU each,
    all on 127.0.0.1 (ray.cluster_utils.Cluster). Once the root run holds a checkpoint, the whole
    raylet training it is removed and its worker killed; the task is retried on the other node,
    continues from its checkpoint, and every record, metric and weight matches the local run."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster


    if ray.is_initialized():
        ray.shutdown()  # the module's one-node instance, if an earlier test started it
    tmp = tempfile.mkdtemp(prefix="rt-rc-", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", tmp)  # the cluster's address file too, not /tmp/ray
    os.makedirs(os.path.join(tmp, "ray"), exist_ok=True)
    store = 80 * 1024**2
    args = {"object_store_memory": store, "temp_dir": tmp, "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, **args})
    nodes = [cluster.add_node(num_cpus=1, object_store_memory=store) for _ in range(2)]
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        assert len([n for n in ray.nodes() if n["Alive"]]) == 3
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
        tasks = sweep.build_tasks(_configs(stores), tmp_path / "runs")
        root = tasks[0]
        lost: dict = {}
        stop = threading.Event()

        def remove_the_node_training_root() -> None:
            pid = _trainer(root.run_dir, stop)
            if pid is None:
                return
            parent = _ppid(pid)
            for i, node in enumerate(nodes):
                if parent in [p.process.pid for p in node.all_processes.get("raylet", [])]:
                    lost.update(node=i, at=rundir.checkpoint_steps(root.run_dir)[-1], pid=pid)
                    os.kill(pid, signal.SIGKILL)  # the worker dies with its node, not moments later
                    cluster.remove_node(node, allow_graceful=False)
                    return
            lost["error"] = f"the run's process {pid} (parent {parent}) is on no worker raylet"

        lines = _sweep_while(tasks, remove_the_node_training_root, stop, max_retries=2)
        assert "error" not in lost and "node" in lost, (lost, lines)
        resumed = [line for line in lines if line.startswith(f"{root.cfg.name}: ") and "retried" in line]
        assert len(resumed) == 1, lines
        step = int(resumed[0].rsplit(" ", 1)[1])
        # from its checkpoint, not from step 0 (one more may have been written before the kill landed)
        later = [s for s in sorted({*range(8, 41, 8), *root.save_at}) if s > lost["at"]][:1]
        assert step in {lost["at"], *later}, (lost, lines)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        assert _everything(tasks) == _everything(local_sweep)
        assert _leftovers(tmp_path / "runs") == []
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
