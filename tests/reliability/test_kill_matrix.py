"""Kill matrix: ``train`` and ``finetune --replay-fraction auto`` killed (SIGKILL) at seeded random
moments, then rerun with ``--resume``, end bit-identical to an uninterrupted run.

The kill times are fractions of the uninterrupted run's own wall time (drawn from a seeded
generator), so they spread over start-up, tokenizing, the search's candidates, training,
checkpoints and the final writes on any machine. Every run is a subprocess with one thread.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import finetune_argv

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SEED = 2026
KILLS = 3  # per command


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONPATH=os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def _cli(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "replaytune.cli", *argv]


def _run(argv: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(_cli(argv), env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return time.perf_counter() - t0


def _kill_after(argv: list[str], out: Path, seconds: float) -> list[str] | None:
    """Start the command and SIGKILL it after ``seconds``; what ``out`` held then (None: it had finished)."""
    proc = subprocess.Popen(_cli(argv), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=seconds)
        return None
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return sorted(p.name for p in out.iterdir()) if out.is_dir() else []


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# what may differ between an interrupted and an uninterrupted run: timings, and whether a store was reused
VOLATILE = {"tokens_per_s", "elapsed_s", "wall_time_s", "seconds", "train_time_s", "eval_time_s", "up_to_date"}


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _read(path: Path, out: Path):
    """A JSON file with the run's own directory written as OUT (runs in other folders compare equal)."""
    return _strip(json.loads(path.read_text().replace(str(out), "OUT")))


def _metrics(path: Path) -> list:
    return [_strip(json.loads(line)) for line in path.read_text().splitlines()]


def _train_outputs(out: Path) -> dict:
    record = _read(out / "record.json", out)
    record["fingerprints"].pop("config")  # hashes out_dir too
    return {"record": record, "metrics": _metrics(out / "metrics.jsonl"),
            "weights": _digest(out / "model" / "model.safetensors")}


def _finetune_outputs(out: Path) -> dict:
    summary = _read(out / "finetune.json", out)
    return {"weights": _digest(out / "model" / "model.safetensors"), "forgetting": _read(out / "forgetting.json", out),
            "search": _read(out / "replay_search.json", out), "summary": summary}


def _differences(a, b, at: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), f"{at}.{k}")]
    return [] if a == b else [f"{at}: {str(a)[:80]} != {str(b)[:80]}"]


def _matrix(argv_for, outputs, tmp_path: Path, seed: int) -> list[list[str] | None]:
    """Kill KILLS runs at seeded moments, resume each, compare with an uninterrupted run; what each kill found."""
    ref = tmp_path / "reference"
    wall = _run(argv_for(ref))
    expected = outputs(ref)
    rng = random.Random(seed)
    killed = []
    for i in range(KILLS):
        out = tmp_path / f"killed-{i}"
        killed.append(_kill_after(argv_for(out), out, rng.uniform(0.4, 0.95) * wall))
        _run(argv_for(out) + ["--resume"])
        got = outputs(out)
        assert got == expected, f"kill {i} at {killed[-1]}: differs at {_differences(got, expected)}"
        assert not [p for p in out.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name], "temporaries left behind"
    return killed


def test_train_killed_at_random_moments_resumes_bit_identical(train_inputs, tmp_path):
    def argv(out: Path) -> list[str]:  # 120 + 8 steps: long enough for kills to land in training
        return ["train", str(train_inputs.config), "--out", str(out), "--set", "phases.0.steps=120"]

    killed = _matrix(argv, _train_outputs, tmp_path, SEED)
    assert any(k is not None and "metrics.jsonl" in k for k in killed), killed  # one kill at least landed in training


def test_finetune_auto_killed_at_random_moments_resumes_bit_identical(ft_inputs, tmp_path):
    def argv(out: Path) -> list[str]:
        return finetune_argv(ft_inputs, out, "--replay-fraction", "auto", "--replay-candidates", "0,0.5",
                             "--epochs", "2", "--checkpoint-every", "2")

    killed = _matrix(argv, _finetune_outputs, tmp_path, SEED + 1)
    assert any(k is not None and "search" in k for k in killed), killed  # one kill at least landed in the search
