"""``replaytune demo``: the controlled replay study at CPU scale on text already on this machine."""

from __future__ import annotations

import argparse


def _run(args) -> int:
    import json
    from pathlib import Path

    from replaytune.study import demo

    summary = demo.run_demo(args.out, generic=args.generic, targets=args.target or None, quick=args.quick,
                            workers=args.workers, threads=args.threads, micro_batch_size=args.micro_batch_size)
    t = summary["timing_s"]
    print(f"\nreplaytune demo finished in {summary['wall_time_s'] / 60:.1f} min (data {t['data']:.0f} s, runs "
          f"{t['runs']:.0f} s, report {t['report']:.0f} s; {summary['workers']} workers x {summary['threads']} thread(s))")
    for name, info in summary["targets"].items():
        results = json.loads((Path(info["dir"]) / "results.json").read_text())
        print(f"\n[{name}] {info['dir']}/report.md")
        for line in demo.headline(results):
            print("  " + line)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the paper's controlled replay study at CPU scale (the main job, ~15 min on 2 cores)",
        description="Reproduce Kotha & Liang's controlled experiment at CPU scale on real text found on this "
        "machine: man pages as generic data and Basque translation strings as the target (Python standard-library "
        "source where there are none). Pre-trains a small Llama, fine-tunes with and without replay (total steps fixed), mid-trains "
        "over rho, fits each setting's data-efficiency curve (its baseline repeated at more target data) and "
        "prints the target-data multipliers with 90% intervals; writes results.json, report.md and plots. "
        "Interrupted? Run the same command again: finished runs are skipped.",
    )
    p.add_argument("--out", default="demo-out", help="output directory (default: demo-out)")
    p.add_argument("--generic", metavar="PATH", help="your generic text instead of the man pages (file, dir or glob)")
    p.add_argument("--target", metavar="PATH", action="append",
                   help="your target text instead of the defaults (repeatable; the first gets the full study)")
    p.add_argument("--workers", type=int, default=2,
                   help="training processes at once, one thread each (default 2: faster than one process with "
                   "two threads for this model size on 2 cores)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per worker process (default 1); another count sums in another order, which "
                   "may change the rounding (on a small model it may not: BENCHMARKS.md)")
    p.add_argument("--micro-batch-size", type=int, default=None, metavar="N",
                   help="sequences per forward pass, the rest of the batch of 16 by gradient accumulation: the same "
                   "updates in another summation order, which is how BENCHMARKS.md checks that the headline is "
                   "stable under rounding (default: the whole batch)")
    p.add_argument("--quick", action="store_true", help="a smoke run with tiny budgets (~5 min on 2 cores; checks the pipeline, results not meaningful)")
    p.set_defaults(func=_run)
