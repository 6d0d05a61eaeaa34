"""``replaytune sweep``: expand a grid into runs and execute them, sharing common prefixes."""

from __future__ import annotations

import argparse

from replaytune.commands import REPORT_TO_METAVAR, add_launcher_flags, make_executor, report_override, report_to


def _run(args) -> int:
    from replaytune import trackers
    from replaytune.study import sweep

    executor = make_executor(args)
    configs, out_dir = sweep.load_sweep(args.config, args.set + report_override(args))
    trackers.require([n for c in configs for n in [*c.report_to, *(["tensorboard"] if c.tensorboard else [])]])
    if args.out:
        from pathlib import Path

        out_dir = Path(args.out)
    tasks = sweep.build_tasks(configs, out_dir, share_prefixes=not args.no_share)
    saved = 1 - sum(t.computed_steps for t in tasks) / max(1, sum(t.steps for t in tasks))
    print(f"{len(tasks)} runs, {sum(t.steps for t in tasks)} steps alone, "
          f"{sum(t.computed_steps for t in tasks)} with prefix sharing ({saved:.0%} saved)")
    for t in tasks:
        src = f"branch from {tasks[t.branch_from].cfg.name} at step {t.branch_step}" if t.branch_from is not None else "from scratch"
        print(f"  {t.cfg.name:40s} {t.steps:7d} steps  {src}  -> {t.run_dir}")
    if args.dry_run:
        return 0
    workers = args.workers or 1
    launcher = sweep.TorchrunLauncher(args.nproc_per_node) if args.torchrun else None
    result = sweep.execute(tasks, launcher, workers=workers, executor=executor)
    path = sweep.write_summary(out_dir, tasks, result)
    print(f"done: {len(result.records)} runs ({len(result.skipped)} finished earlier); summary in {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="run a grid of training runs, resumable, sharing common prefixes",
        description="Expand `grid` over `base` (a run config) into runs. Each run's directory is keyed by a "
        "hash of its resolved config, so an interrupted sweep resumes and skips finished runs. Runs identical "
        "for their first k steps (same init, batches and LR) compute that prefix once and branch from its "
        "checkpoint; results are bit-identical to running each alone.",
    )
    p.add_argument("config", help="sweep YAML: {base: RUN_CONFIG or path, grid: {dotted.key: [values]}, out_dir: DIR}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field of the base config")
    p.add_argument("--out", help="output directory (default: out_dir of the sweep file)")
    p.add_argument("--report-to", type=report_to, metavar=REPORT_TO_METAVAR,
                   help="every run also logs to these trackers, comma-separated")
    p.add_argument("--no-share", action="store_true", help="compute every run from scratch")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the compute saved, run nothing")
    add_launcher_flags(p)
    p.add_argument("--torchrun", action="store_true", help="local: launch each run with torchrun instead of in-process")
    p.add_argument("--nproc-per-node", type=int, default=1, help="processes per run with --torchrun")
    p.set_defaults(func=_run)
