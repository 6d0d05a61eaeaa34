"""Peak host memory (RSS) per process: full fine-tuning of a ~134M-parameter model, 1 process vs FSDP over 2.

Goal (issue 12): under ``parallel: fsdp`` no rank may hold what one process holds; a rank's
peak must fall, not stay at a full fp32 copy plus its shard.

What runs: a Llama (hidden 768, MLP 2048, 12 layers, 12 heads, vocabulary 32,000, untied:
134M parameters, 537 MB in fp32) saved with ``save_pretrained`` and loaded by path through
replaytune's loader (``model.pretrained``), full fine-tuning with AdamW on a random-token
store, --steps steps of --batch sequences of 128 tokens, on the CPU (gloo), started by
torchrun with 1 and then 2 processes (``--set parallel=fsdp`` for 2). Each process reports
its own peak resident set (``getrusage(RUSAGE_SELF).ru_maxrss``) when training has ended,
and the RSS of the same interpreter right after importing torch and replaytune (the floor
that no model memory is in).

In one process the model costs weights + gradients + two AdamW moments = 16 bytes per
parameter (2.1 GB), plus activations; sharded over 2, each rank should hold half of that.

Usage: python benchmarks/bench_fsdp_memory.py [--steps 2] [--batch 4] [--procs 1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODEL = dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
             num_key_value_heads=12, vocab_size=32000, max_position_embeddings=512, tie_word_embeddings=False)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def worker(cfg_path: str, report: str) -> None:
    from replaytune.config import load as load_run_config
    from replaytune.train import train

    from replaytune.train import loop

    floor = _rss_mb()
    loaded: list[float] = []
    make_optimizer = loop.make_optimizer

    def optimizer_after_load(*a, **k):  # called right after the model is loaded and sharded
        loaded.append(_rss_mb())
        return make_optimizer(*a, **k)

    loop.make_optimizer = optimizer_after_load
    cfg = load_run_config(cfg_path)
    start = time.perf_counter()
    train(cfg)
    rank = int(os.environ.get("RANK", 0))
    Path(report, f"rank-{rank}.json").write_text(json.dumps({
        "rank": rank, "world": int(os.environ.get("WORLD_SIZE", 1)), "floor_mb": floor, "loaded_mb": loaded[0], "peak_mb": _rss_mb(),
        "train_s": time.perf_counter() - start,
    }))


def setup(root: Path, steps: int, batch: int, *, model: dict = MODEL, seq_len: int = 128, device: str = "cpu",
          dtype: str = "fp32") -> tuple[dict, int]:
    """A saved random Llama (``model``), a random-token store, and a run config fine-tuning it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from replaytune.data.store import write_store

    rng = np.random.default_rng(0)
    docs = [rng.integers(1, model["vocab_size"], size=max(1024, seq_len * 2), dtype=np.int64) for _ in range(64)]
    for d in docs:
        d[-1] = 0
    store = write_store(root / "generic", docs[8:], docs[:8], vocab_size=model["vocab_size"], eos_id=0, fingerprint="mem-bench")
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(**model, eos_token_id=0, bos_token_id=0))
    params = sum(p.numel() for p in llama.parameters())
    llama.save_pretrained(root / "model")
    del llama
    cfg = {
        "name": "mem-bench", "out_dir": str(root / "run"),
        "model": {"pretrained": str(root / "model")},
        "data": {"sources": {"generic": {"store": str(store.path)}}, "seq_len": seq_len, "batch_size": batch},
        "phases": [{"name": "ft", "steps": steps, "constant": "generic", "lr": {"peak": 1e-4}}],
        "eval": {"at_start": False, "interval": 0, "sequences": 2},
        "checkpoint": {"interval": 0, "keep": 1},
        "device": device, "dtype": dtype, "progress": False,
    }
    return cfg, params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--procs", default="1,2")
    ap.add_argument("--worker", nargs=2, metavar=("CFG", "REPORT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg_data, params = setup(Path(tmp), args.steps, args.batch)
        import yaml

        cfg = Path(tmp, "cfg.yaml")
        cfg.write_text(yaml.safe_dump(cfg_data))
        for n in [int(x) for x in args.procs.split(",")]:
            report = Path(tmp, f"report-{n}")
            report.mkdir()
            # one run folder per process count; FSDP when there are several
            text = Path(cfg).read_text().replace(str(Path(tmp) / "run"), str(Path(tmp, f"run-{n}")))
            cfg_n = Path(tmp, f"cfg-{n}.yaml")
            cfg_n.write_text(text + ("parallel: fsdp\n" if n > 1 else ""))
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
                   __file__, "--worker", str(cfg_n), str(report)]
            env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // n))}
            res = subprocess.run(cmd, env=env, capture_output=True, text=True)
            print("\n".join(l for l in res.stdout.splitlines() if l.startswith("MEM")))
            if res.returncode:
                sys.exit(res.stderr[-3000:])
            for f in sorted(report.glob("rank-*.json")):
                rows.append(json.loads(f.read_text()))
    print(f"model: {params / 1e6:.0f}M parameters, fp32 {params * 4 / 1e9:.2f} GB; AdamW full fine-tuning: "
          f"{params * 16 / 1e9:.2f} GB of weights, gradients and moments in one process")
    print("peak RSS in MB: after imports (no model), through loading and sharding the model, through training")
    print(f"{'processes':>9} {'rank':>4} {'imports':>8} {'loaded':>8} {'trained':>8} {'train s':>8}")
    for r in rows:
        print(f"{r['world']:>9} {r['rank']:>4} {r['floor_mb']:>8.0f} {r['loaded_mb']:>8.0f} {r['peak_mb']:>8.0f} {r['train_s']:>8.1f}")
    out = os.environ.get("OUT")
    if out:
        Path(out, "bench_fsdp_memory.json").write_text(json.dumps({"params": params, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
