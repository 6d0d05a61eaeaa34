"""``replaytune study``: the paper's controlled study at any scale."""

from __future__ import annotations

import argparse

from replaytune.commands import REPORT_TO_METAVAR, add_launcher_flags, make_executor, report_override, report_to


def _run(args) -> int:
    from replaytune import trackers
    from replaytune.study import report
    from replaytune.study import runs as study

    executor = make_executor(args)
    extra = (["replay_search=true"] if args.auto else []) + report_override(args)
    cfg = study.load_study(args.config, args.set + extra, preset=args.preset)
    trackers.require(cfg.report_to)  # before the study writes anything
    results = study.run_study(cfg, args.out, share_prefixes=not args.no_share, workers=args.workers or 1,
                              executor=executor)
    written = report.build_report(args.out)
    m = results["multipliers"]
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}x"  # noqa: E731
    print(f"target-data multipliers: fine-tuning replay {fmt(m['finetune_replay'])}, "
          f"mid-training replay {fmt(m['midtrain_replay'])}, full schedule {fmt(m['full_schedule'])}")
    print(f"results: {args.out}/results.json; report: {args.out}/report.md ({len(written)} files)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study",
        help="run the paper's controlled replay study (fine-tuning, mid-training, reference fit)",
        description="Pre-train, fine-tune with and without replay (total steps fixed, best LR per rho), "
        "mid-train over the rho x alpha grid, run uniform-mixing reference runs, fit L(x) = A/x^B + C and report "
        "target-data efficiency multipliers and forgetting. `--preset paper` is the paper's setup (150M model, "
        "1024 steps of 1024 x 4096 tokens): give it your stores with --set target_store=... generic_store=...; "
        "`--preset ramps` adds continuous replay schedules (ramps) beside its two-stage grid, 4 paired seeds.",
    )
    p.add_argument("config", nargs="?", help="study YAML (fields of replaytune.study.runs.StudyConfig)")
    p.add_argument("--preset", choices=["paper", "ramps"], help="start from a named preset")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field")
    p.add_argument("--out", default="study-out", help="output directory (default: study-out)")
    p.add_argument("--report-to", type=report_to, metavar=REPORT_TO_METAVAR,
                   help="every run also logs to these trackers, comma-separated")
    add_launcher_flags(p)
    p.add_argument("--no-share", action="store_true", help="do not share common prefixes between runs")
    p.add_argument("--auto", action="store_true",
                   help="also run the replay-fraction search (finetune --replay-fraction auto) on the fine-tuning grid "
                        "and report its choice per seed next to the grid's best")
    p.set_defaults(func=_run)
