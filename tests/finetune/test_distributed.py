"""`replaytune finetune` under torchrun (2 CPU processes, gloo): same result as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from replaytune.finetune import run_finetune

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("parallel", ["ddp", "fsdp-lora"])
def test_two_processes_match_one(assets, finetune_cfg, tmp_path, parallel):
    """DDP; and FSDP with LoRA, where rank 1 builds the pretrained model and its adapters on the
    meta device and receives its shards from rank 0."""
    lora = parallel == "fsdp-lora"
    flags = [
        "--model", str(assets.chat_model), "--target", str(assets.chat), "--replay", str(assets.generic),
        "--replay-val", "10", "--replay-fraction", "0.5", "--epochs", "1", "--seq-len", "64", "--batch-size", "4",
        "--micro-batch-size", "2", "--lr", "3e-3", "--eval-sequences", "8", "--eval-interval", "0", "--device", "cpu",
        "--no-progress", "--output", str(tmp_path / "two"),
        *(["--parallel", "fsdp", "--lora", "--lora-r", "4"] if lora else []),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.path.join(REPO, "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "replaytune.cli",
           "finetune", *flags]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("# Forgetting report") == 1  # rank 0 speaks for both
    one = run_finetune(finetune_cfg(model=str(assets.chat_model), target={"path": str(assets.chat)}, epochs=1, seq_len=64,
                                    output=str(tmp_path / "one"), **({"lora": {"r": 4}} if lora else {})),
                       log=lambda s: None)
    two = json.loads((tmp_path / "two" / "forgetting.json").read_text())
    for name, row in one.report["loss"].items():
        assert two["loss"][name]["base"] == pytest.approx(row["base"], rel=1e-5)
        assert two["loss"][name]["finetuned"] == pytest.approx(row["finetuned"], rel=1e-4)
    assert two["steps"] == one.report["steps"]
