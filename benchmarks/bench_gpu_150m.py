"""Tokens/s and model FLOPs utilisation (MFU) of the ``150m`` preset on one GPU.

Goal (issue 3): >= 40% MFU on an H100. The paper's setting: hidden 512, MLP 1792, 6 layers,
8 heads, untied embeddings, Llama-3 vocabulary (128,256), sequence 4096, bf16 compute with
fp32 parameters.

What runs: the real loop (``replaytune.train.train``: bf16 autocast, SDPA attention, TF32,
optional ``torch.compile``) on a synthetic store of random token ids (uint32, no tokenizer
needed), --batch sequences per step in micro-batches of --micro-batch. Per-step time is
the time between consecutive step callbacks; the first --skip steps (compilation, allocator
warm-up) are left out.

MFU = tokens/s x FLOPs per token / peak dense bf16 FLOP/s of the card, with FLOPs per token
from ``replaytune.model.train_flops_per_token`` (6 x matmul parameters + attention
12 x layers x hidden x seq: 0.68 GFLOP for 150m at seq 4096). Peaks: H100 SXM / H200 989
TFLOP/s, H100 PCIe 756, A100 312 (dense, no sparsity); --peak-tflops overrides.

Usage (one GPU, ~3 minutes with compilation):
    python benchmarks/bench_gpu_150m.py [--steps 30] [--skip 10] [--batch 64] [--micro-batch 4]
        [--no-compile] [--minimal] [--out results.json]
``--minimal`` also times a hand-written loop on the same model and batches, for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

PEAK_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def peak_tflops(name: str) -> float | None:
    for key, value in PEAK_TFLOPS.items():  # ordered: "H100 PCIe" before "H100"
        if key in name:
            return value
    return None


def make_store(root: Path, vocab: int, tokens: int):
    from replaytune.data.store import write_store

    rng = np.random.default_rng(0)
    docs = [rng.integers(1, vocab, size=4096, dtype=np.int64) for _ in range(tokens // 4096 + 1)]
    for d in docs:
        d[-1] = 0
    val = docs[:4]
    return write_store(root / "generic", docs, val, vocab_size=vocab, eos_id=0, fingerprint=f"gpu-bench-{vocab}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--skip", type=int, default=10)
    ap.add_argument("--batch", type=int, default=64, help="sequences per optimizer step")
    ap.add_argument("--micro-batch", type=int, default=4, help="sequences per forward pass")
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--preset", default="150m")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--minimal", action="store_true", help="also time a hand-written loop")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--dry-run", action="store_true", help="allow a CPU run (checks the script, e.g. --preset tiny --vocab 2048 --seq-len 128)")
    ap.add_argument("--out", default=os.environ.get("OUT", ".") + "/bench_gpu_150m.json")
    args = ap.parse_args()

    import torch

    from replaytune import config
    from replaytune.model import preset_config, train_flops_per_token
    from replaytune.train import train

    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        raise SystemExit("this benchmark needs a CUDA GPU (--dry-run checks the script on CPU)")
    name = torch.cuda.get_device_name(0) if cuda else "cpu (dry run)"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    peak = args.peak_tflops or peak_tflops(name)
    root = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    store = make_store(root, args.vocab, (args.steps + 2) * args.batch * args.seq_len)
    cfg = config.validate(
        {
            "name": "gpu-bench",
            "out_dir": str(root / "run"),
            "model": {"preset": args.preset},
            "data": {
                "sources": {"generic": {"store": str(store.path)}},
                "seq_len": args.seq_len,
                "batch_size": args.batch,
                "micro_batch_size": args.micro_batch,
            },
            "phases": [{"name": "p", "steps": args.steps, "constant": "generic", "lr": {"peak": 1e-3}}],
            "eval": {"interval": 0, "sequences": 4, "batch_size": args.micro_batch},
            "checkpoint": {"interval": 0, "final_model": False},
            "compile": not args.no_compile,
            "progress": False,
        }
    )
    stamps: list[float] = []

    def tick(trainer):
        sync()
        stamps.append(time.perf_counter())

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    train(cfg, callbacks=[tick])
    total = time.perf_counter() - t0
    steps = np.diff(stamps[args.skip : -1])  # the last step also evaluates and checkpoints
    tokens_per_step = args.batch * args.seq_len
    flops = train_flops_per_token(preset_config(args.preset, args.vocab, seq_len=args.seq_len), args.seq_len)
    tps = tokens_per_step / statistics.median(steps)
    result = {
        "device": name,
        "torch": torch.__version__,
        "preset": args.preset,
        "vocab": args.vocab,
        "seq_len": args.seq_len,
        "batch": args.batch,
        "micro_batch": args.micro_batch,
        "compile": not args.no_compile,
        "timed_steps": len(steps),
        "step_s_median": float(statistics.median(steps)),
        "tokens_per_s": tps,
        "flops_per_token": flops,
        "peak_tflops": peak,
        "mfu": tps * flops / (peak * 1e12) if peak else None,
        "max_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "wall_s": total,
    }
    if args.minimal:
        result["minimal"] = minimal(cfg, args, flops, peak, "cuda" if cuda else "cpu")
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


def minimal(cfg, args, flops, peak, device: str) -> dict:
    """Plain PyTorch on the same model and data: bf16 autocast, AdamW, accumulation, clip."""
    import torch
    import torch.nn.functional as F

    from replaytune.model import build_model
    from replaytune.train import RunPlan, open_stores
    from replaytune.data.window import windows

    stores = open_stores(cfg)
    plan = RunPlan(cfg, stores)
    model = build_model(cfg.model, vocab_size=plan.vocab_size, seq_len=args.seq_len).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    precision = torch.bfloat16 if device == "cuda" else torch.float32
    if not args.no_compile:
        for layer in model.model.layers:
            layer.compile()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    times = []
    for s in range(args.steps):
        batch, _ = plan.global_batch(s)
        w = windows(stores["generic"].train, batch.ids, args.seq_len)
        x, y = w.inputs, w.targets
        x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        sync()
        t0 = time.perf_counter()
        for lo in range(0, args.batch, args.micro_batch):
            with torch.autocast(device, dtype=precision, enabled=device == "cuda"):
                logits = model(input_ids=x[lo : lo + args.micro_batch], use_cache=False).logits
            loss = F.cross_entropy(logits.flatten(0, 1).float(), y[lo : lo + args.micro_batch].flatten())
            (loss * args.micro_batch / args.batch).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        sync()
        times.append(time.perf_counter() - t0)
    tps = args.batch * args.seq_len / statistics.median(times[args.skip :])
    return {"tokens_per_s": tps, "mfu": tps * flops / (peak * 1e12) if peak else None}


if __name__ == "__main__":
    main()
