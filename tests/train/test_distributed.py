"""Several processes (torchrun, gloo on CPU) give the losses of one process, same global batch."""

from __future__ import annotations

import subprocess

import pytest

from .helpers import python, strip_timing, subprocess_env, tiny_config
from replaytune.config import dump_yaml
from replaytune.train import list_checkpoints, read_metrics, train


def _torchrun(cfg, tmp_path, out, *extra):
    yaml_path = tmp_path / "cfg.yaml"
    yaml_path.write_text(dump_yaml(cfg))
    cmd = [
        python(), "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "replaytune.cli", "train", str(yaml_path), "--out", str(out), *extra,
    ]
    res = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    return read_metrics(out)


def _close(a, b, rel):
    """Per-source dicts: the same keys, nulls in the same places, numbers within ``rel``."""
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] is None) == (b[k] is None), k
        if a[k] is not None:
            assert a[k] == pytest.approx(b[k], rel=rel), k


def _assert_close(lines, ref, rel=1e-5):
    assert len(lines) == len(ref)
    for got, want in zip(lines, ref):
        assert (got["kind"], got["step"], got["phase"], got["phase_step"]) == (want["kind"], want["step"], want["phase"], want["phase_step"])
        assert got["epochs"] == want["epochs"]
        if got["kind"] == "train":
            assert got["tokens"] == want["tokens"] and got["lr"] == want["lr"]
            assert got["loss"] == pytest.approx(want["loss"], rel=rel)
            _close(got["train_loss"], want["train_loss"], rel)
        else:
            _close(got["eval"], want["eval"], rel)


def test_ddp_two_processes_match_one(masked_stores, tmp_path):
    """Loss-masked data and micro-batches of 3 (each rank's 4 sequences run as 3 + 1): the
    global target-token count is summed over ranks before any rank normalizes its loss."""
    one = tiny_config(masked_stores, tmp_path / "one")
    train(one)
    lines = _torchrun(one, tmp_path, tmp_path / "ddp", "--set", "data.micro_batch_size=3")
    _assert_close(lines, read_metrics(tmp_path / "one"))


@pytest.mark.slow
def test_fsdp_two_processes_match_one_and_resume_exactly(reference, tmp_path):
    lines = _torchrun(reference.cfg, tmp_path, tmp_path / "fsdp", "--set", "parallel=fsdp")
    _assert_close(lines, reference.metrics)
    assert (tmp_path / "fsdp/model/model.safetensors").is_file()
    ckpt = list_checkpoints(tmp_path / "fsdp")[0]
    assert ckpt.step == 16 and (ckpt.path / "dcp").is_dir()
    again = _torchrun(reference.cfg, tmp_path, tmp_path / "again", "--set", "parallel=fsdp", "--init-from", str(ckpt.path))
    assert strip_timing(again) == strip_timing(lines)  # sharded checkpoint restores bit-exactly
