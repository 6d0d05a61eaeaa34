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


def add_launcher_flags(p: argparse.ArgumentParser) -> None:
    """--launcher local|ray and its companions (sweep and study)."""
    p.add_argument("--workers", type=int, default=None,
                   help="local: runs at once in separate processes, one thread each (default 1); "
                        "ray: the most runs submitted at once (default: every run that is ready)")
    p.add_argument("--launcher", choices=["local", "ray"], default="local",
                   help="where runs execute: this machine (default), or a Ray cluster, each run a Ray task "
                        "(needs pip install 'replaytune[ray]'; run directories on storage every node sees)")
    p.add_argument("--address", metavar="auto|HOST:PORT",
                   help="with --launcher ray: join this Ray cluster (auto: the one `ray start` made on this "
                        "machine); default: start Ray on this machine for the sweep")
    p.add_argument("--gpus-per-run", type=int, default=0, metavar="K",
                   help="with --launcher ray: GPUs each run asks for; K > 1 starts the run with torchrun, "
                        "one process per GPU, on the node Ray picks")
    p.add_argument("--cpus-per-run", type=int, default=1, metavar="N",
                   help="with --launcher ray: CPUs each run asks for (and torch threads of a run in one process)")
    p.add_argument("--max-retries", type=int, default=3, metavar="N",
                   help="with --launcher ray: start a run's task again up to N times after its worker or node "
                        "died; it resumes from its last checkpoint")


def make_executor(args):
    """The Ray executor the flags ask for, or None for the local executors."""
    from replaytune.errors import ConfigError

    if args.launcher != "ray":
        given = [f for f, v in (("--address", args.address), ("--gpus-per-run", args.gpus_per_run),
                                ("--cpus-per-run", args.cpus_per_run != 1), ("--max-retries", args.max_retries != 3))
                 if v]
        if given:
            raise ConfigError(f"{given[0]} goes with --launcher ray")
        return None
    if getattr(args, "torchrun", False):
        raise ConfigError("--torchrun is for --launcher local; with --launcher ray use --gpus-per-run K")
    from replaytune.study.sweep.ray import RayExecutor, require_ray

    require_ray(local=args.address in (None, "local"))  # before anything is planned or written
    return RayExecutor(args.address, gpus_per_run=args.gpus_per_run, cpus_per_run=args.cpus_per_run,
                       max_retries=args.max_retries, max_running=args.workers)
