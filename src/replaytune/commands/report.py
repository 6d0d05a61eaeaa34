"""``replaytune report DIR``: rebuild plots and report.md from saved records alone."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from replaytune.errors import DataError

DESCRIPTION = """\
Rebuild DIR/report.md and DIR/plots/*.png from DIR/results.json and the run records it
points to (each run_dir's metrics.jsonl and record.json). Nothing is trained or
evaluated: the reference fit, multipliers, bootstrap intervals and noise are recomputed
from the saved numbers, so the same DIR always gives the same files. A plot whose
records are missing is skipped with a note in report.md."""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "report",
        help="rebuild plots and report.md of a study from its saved records",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dir", metavar="DIR", help="results directory holding results.json (the study's --out)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="bootstrap resamples for multiplier intervals (default 1000; 0: none)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from replaytune.study.report import build_report

    if args.bootstrap < 0:
        raise DataError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    if not Path(args.dir).is_dir():
        raise DataError(f"{args.dir}: no such directory")
    for path in build_report(args.dir, resamples=args.bootstrap, seed=args.seed):
        print(path)
    return 0
