"""Peak memory and tokens/s of one training step, full logits against the chunked loss (CPU).

Goal (issue 23): at vocabulary 128,256, seq 4096, micro-batch 1, the chunked linear +
cross-entropy (``replaytune.train.loss``) cuts a training step's peak memory at least 4x
and keeps >= 0.95x the tokens/s of the full-logits path.

What runs: the ``150m`` preset's geometry (hidden 512, MLP 1792, 8 heads, untied, fp32)
with ``--layers`` decoder layers, one sequence of ``--seq-len`` random tokens, and a whole
training step as the loop does it: forward, loss (``forward_losses``, the loop's own
function), backward, gradient clipping, AdamW. Each variant runs in its own subprocess
(one warm-up step that also allocates AdamW's moments, then ``--steps`` timed steps), the
variants alternating over ``--rounds`` (the machine is shared and its load drifts), so
peak memory is the process's own: the peak resident set (``VmHWM``) is reset after the
warm-up (``/proc/self/clear_refs``), so it covers the timed steps only. Reported:

* ``peak_rss_gb``: the process's peak resident memory during the timed steps (weights,
  AdamW moments, gradients, activations, the loss; plus ~0.3 GB of Python and torch);
* ``step_gb``: that peak minus the resident memory just before the step: what the step
  itself adds (gradients, activations, logits), the part that grows with the micro-batch;
* ``tokens_per_s``: seq_len / median step time.

Usage: python benchmarks/bench_chunked_loss.py [--layers 6] [--steps 2] [--rounds 2] [--threads 2]
    [--variants full,chunked] [--chunk-size N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _status(field: str) -> float:
    """A /proc/self/status memory field in GB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / 1e9
    raise RuntimeError(f"/proc/self/status has no {field}")


def child(args) -> dict:
    import torch
    from transformers import LlamaForCausalLM

    from replaytune.model import preset_config
    from replaytune.train.loss import chunk_tokens, chunked_head, forward_losses

    torch.set_num_threads(args.threads)
    config = preset_config("150m", args.vocab, seq_len=args.seq_len, overrides={"num_hidden_layers": args.layers})
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    head = chunked_head(model, args.variant)
    if args.variant == "chunked" and args.chunk_size:
        import functools

        from replaytune.train import loss as loss_mod

        loss_mod.linear_cross_entropy = functools.partial(loss_mod.linear_cross_entropy, chunk_size=args.chunk_size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, args.vocab, (1, args.seq_len), generator=g)
    y = torch.randint(0, args.vocab, (1, args.seq_len), generator=g)
    y[:, : args.seq_len // 8] = -100  # a prompt: masked targets, as a chat source has

    def step() -> float:
        total, _ = forward_losses(model, x, y, head=head)
        (total / args.seq_len).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(total) / float((y != -100).sum())

    loss0 = step()  # warm-up: allocates AdamW's moments
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
    before = _status("VmRSS")
    times, losses = [], []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - t0)
    peak = _status("VmHWM")
    return {
        "variant": args.variant,
        "path": "full" if head is None else "chunked",
        "chunk_tokens": None if head is None else (args.chunk_size or chunk_tokens(args.vocab)),
        "params": sum(p.numel() for p in model.parameters()),
        "rss_before_gb": before,
        "peak_rss_gb": peak,
        "step_gb": peak - before,
        "maxrss_whole_process_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
        "step_s": times,
        "tokens_per_s": args.seq_len / statistics.median(times),
        "losses": [loss0, *losses],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=128_256)
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=6, help="decoder layers of the 150m geometry (the preset has 6)")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per variant, after one warm-up step")
    ap.add_argument("--rounds", type=int, default=2, help="subprocesses per variant, in alternating order")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", default="full,chunked")
    ap.add_argument("--chunk-size", type=int, default=None, help="tokens per chunk (default: loss.chunk_tokens)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--variant", default=None, help=argparse.SUPPRESS)  # set in the subprocesses
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(child(args)))
        return
    variants = args.variants.split(",")
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(args.rounds):  # alternate the order: the machine's load drifts
        for variant in variants if r % 2 == 0 else variants[::-1]:
            cmd = [sys.executable, __file__, "--variant", variant, "--vocab", str(args.vocab), "--seq-len", str(args.seq_len),
                   "--layers", str(args.layers), "--steps", str(args.steps), "--threads", str(args.threads)]
            if args.chunk_size:
                cmd += ["--chunk-size", str(args.chunk_size)]
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
            if out.returncode != 0:
                sys.exit(f"variant {variant} failed:\n{out.stderr[-3000:]}")
            row = json.loads(out.stdout.strip().splitlines()[-1])
            runs[variant].append(row)
            print(f"round {r} {variant:>8}: peak RSS {row['peak_rss_gb']:.2f} GB (step adds {row['step_gb']:.2f} GB), "
                  f"{row['tokens_per_s']:.1f} tokens/s, steps {', '.join(f'{t:.1f}' for t in row['step_s'])} s, "
                  f"losses {', '.join(f'{v:.4f}' for v in row['losses'])}", flush=True)
    rows: list[dict] = []
    for variant, got in runs.items():
        steps = [t for row in got for t in row["step_s"]]
        rows.append({"variant": variant, "path": got[0]["path"], "chunk_tokens": got[0]["chunk_tokens"],
                     "params": got[0]["params"], "peak_rss_gb": max(row["peak_rss_gb"] for row in got),
                     "step_gb": max(row["step_gb"] for row in got), "step_s": steps,
                     "tokens_per_s": args.seq_len / statistics.median(steps), "runs": got})
    by = {r["variant"]: r for r in rows}
    if {"full", "chunked"} <= set(by):
        f, c = by["full"], by["chunked"]
        summary = {
            "peak_rss_ratio": f["peak_rss_gb"] / c["peak_rss_gb"],
            "step_memory_ratio": f["step_gb"] / c["step_gb"],
            "tokens_per_s_ratio": c["tokens_per_s"] / f["tokens_per_s"],
        }
        print(f"peak RSS: full {f['peak_rss_gb']:.2f} GB, chunked {c['peak_rss_gb']:.2f} GB ({summary['peak_rss_ratio']:.2f}x); "
              f"memory the step adds: {f['step_gb']:.2f} GB, {c['step_gb']:.2f} GB ({summary['step_memory_ratio']:.2f}x); "
              f"tokens/s (median over all timed steps): full {f['tokens_per_s']:.1f}, chunked {c['tokens_per_s']:.1f} "
              f"(chunked / full {summary['tokens_per_s_ratio']:.3f})")
        rows.append({"summary": summary})
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
