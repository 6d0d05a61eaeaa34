"""One module per subcommand (register + run), and the flags several of them share."""

from __future__ import annotations

import argparse

from replaytune.trackers import NAMES


REPORT_TO_METAVAR = "none|tensorboard|wandb|mlflow|trackio"


def report_to(text: str) -> list[str]:
    """--report-to NAME[,NAME...], as an override of the run config's report_to (none: no tracker)."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in NAMES]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown tracker {bad[0]!r}; choose from {', '.join(NAMES)} (comma-separated)")
    return [n for n in names if n != "none"]


def report_override(args) -> list[str]:
    """The ``--set`` line a --report-to flag stands for (none when the flag was not given)."""
    import json

    value = getattr(args, "report_to", None)
    return [] if value is None else [f"report_to={json.dumps(value)}"]
