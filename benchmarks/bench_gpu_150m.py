"""Tokens/s and model FLOPs utilisation (MFU) of the ``150m`` preset on one GPU.

Goal (issue 3): >= 40% MFU on an H100. The paper's setting: hidden 512, MLP 1792, 6 layers,
8 heads, untied embeddings, Llama-3 vocabulary (128,256), sequence 4096, bf16 compute with
fp32 parameters.

What runs: the real loop (``replaytune.train.train``: bf16 autocast, SDPA attention, TF32,
optional ``torch.compile``) on a synthetic store of random token ids (uint32, no tokenizer
needed), --batch sequences per step in micro-batches of --micro-batch. Per-step time is
the time between consecutive step callbacks; the first --skip steps (compilation, allocator
warm-up) are left out.

MFU = tokens/s x FLOPs per token / peak dense bf16 FLOP/s of the card, counted two ways:

* ``mfu`` (primary): FLOPs per token from ``replaytune.model.train_flops_per_token``: 6 x the
  parameters in matmuls (every layer's projections and the output head; the input embedding
  is a lookup, not counted) + attention 12 x layers x hidden x seq: 0.68 GFLOP for 150m at
  seq 4096;
* ``mfu_6n``: 6 x all parameters (input embedding included, attention not counted), the count
  nanoGPT's and MPT's parameter-based figures start from: 6 x 154.2M = 0.93 GFLOP for 150m.

Peaks: H100 SXM / H200 989 TFLOP/s, H100 PCIe 756, A100 312 (dense, no sparsity);
--peak-tflops overrides.

Levers (each a flag, so that one card compares them in one session): ``--loss`` full logits
or the chunked loss (train/loss.py), ``--compile`` none / each decoder layer (the loop's
``compile: true``) / the whole model, ``--sdpa`` the attention backend (cuDNN or flash),
``--no-fused`` AdamW's per-tensor (foreach) step instead of the fused one.

Usage (one GPU, ~3 minutes with compilation):
    python benchmarks/bench_gpu_150m.py [--steps 30] [--skip 10] [--batch 64] [--micro-batch 4]
        [--loss auto|full|chunked] [--compile none|layers|model] [--sdpa default|cudnn|flash]
        [--no-fused] [--minimal] [--out results.json]
``--minimal`` also times a hand-written loop on the same model and batches, for comparison.
"""

from __future__ import annotations

import argparse
import contextlib
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
    ap.add_argument("--no-compile", action="store_true", help="same as --compile none")
    ap.add_argument("--compile", choices=("none", "layers", "model"), default="layers",
                    help="torch.compile nothing, each decoder layer (the loop's compile: true), or the whole model")
    ap.add_argument("--loss", choices=("auto", "full", "chunked"), default="auto", help="the run's loss setting")
    ap.add_argument("--sdpa", choices=("default", "cudnn", "flash", "efficient"), default="default",
                    help="only this scaled_dot_product_attention backend (default: PyTorch's choice)")
    ap.add_argument("--no-fused", action="store_true", help="AdamW's foreach step instead of the fused kernel")
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
    if args.no_compile:
        args.compile = "none"
    _apply_levers(args)
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
            "compile": args.compile == "layers",
            "loss": args.loss,
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
    with _sdpa(args.sdpa):
        train(cfg, callbacks=[tick, *LAST_CALLBACKS])
    total = time.perf_counter() - t0
    steps = np.diff(stamps[args.skip : -1])  # the last step also evaluates and checkpoints
    tokens_per_step = args.batch * args.seq_len
    model_config = preset_config(args.preset, args.vocab, seq_len=args.seq_len)
    flops = train_flops_per_token(model_config, args.seq_len)
    flops_6n = 6.0 * all_parameters(model_config)
    tps = tokens_per_step / statistics.median(steps)
    result = {
        "device": name,
        "torch": torch.__version__,
        "preset": args.preset,
        "vocab": args.vocab,
        "seq_len": args.seq_len,
        "batch": args.batch,
        "micro_batch": args.micro_batch,
        "compile": args.compile,
        "loss": args.loss,
        "loss_path": LAST_RUN.get("loss"),
        "sdpa": args.sdpa,
        "fused_adamw": LAST_RUN.get("fused"),
        "timed_steps": len(steps),
        "step_s_median": float(statistics.median(steps)),
        "tokens_per_s": tps,
        "flops_per_token": flops,
        "flops_per_token_6n": flops_6n,
        "peak_tflops": peak,
        "mfu": tps * flops / (peak * 1e12) if peak else None,
        "mfu_6n": tps * flops_6n / (peak * 1e12) if peak else None,
        "mfu_definitions": {
            "mfu": "primary: 6 x matmul parameters (layers + output head, no input embedding) + attention 12 x layers x hidden x seq",
            "mfu_6n": "6 x all parameters (input embedding included), no attention term: nanoGPT/MPT-style parameter count",
        },
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
    if args.compile == "layers":
        for layer in model.model.layers:
            layer.compile()
    elif args.compile == "model":
        model.compile()
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


LAST_RUN: dict = {}  # what the loop resolved (loss path, fused AdamW), filled in by _apply_levers' hooks


def all_parameters(config) -> int:
    """Every parameter of the model (embedding included), counted on the meta device."""
    import torch
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        return sum(p.numel() for p in LlamaForCausalLM(config).parameters())


def _sdpa(name: str):
    """Only the named scaled_dot_product_attention backend inside the block (default: no constraint)."""
    if name == "default":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
               "efficient": SDPBackend.EFFICIENT_ATTENTION}[name]
    return sdpa_kernel([backend])


def _apply_levers(args) -> None:
    """Whole-model compile and the unfused optimizer are benchmark-only switches: patch the loop's hooks."""
    from replaytune.train import loop

    make_optimizer, wrap = loop.make_optimizer, loop.wrap

    def optimizer(model, optim):
        opt = make_optimizer(model, optim)
        if args.no_fused:
            for group in opt.param_groups:
                group["fused"] = None  # AdamW.step reads these per group: back to the foreach path
        LAST_RUN["fused"] = bool(opt.param_groups[0].get("fused"))
        return opt

    def wrapped(model, dist, parallel, precision, *, compile=False):
        out = wrap(model, dist, parallel, precision, compile=compile)
        if args.compile == "model":
            out.compile()
        return out

    loop.make_optimizer, loop.wrap = optimizer, wrapped

    def record(trainer):
        LAST_RUN["loss"] = trainer.execution.get("loss")

    LAST_CALLBACKS.append(record)


LAST_CALLBACKS: list = []


if __name__ == "__main__":
    main()
