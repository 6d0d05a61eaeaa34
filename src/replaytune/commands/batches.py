"""``replaytune batches``: what each step's batch of a run holds, computed directly from the step."""

from __future__ import annotations

import argparse
import json


def describe_steps(cfg, start: int, count: int) -> list[dict]:
    """Per step: phase, weights, and per source the count, sequence ids and epoch(s).

    Uses the same :class:`replaytune.train.RunPlan` as the training loop, so what is shown is
    exactly what the loop trains on (each phase's mixture seeded as in training).
    """
    from replaytune.errors import ConfigError
    from replaytune.train import RunPlan, open_stores

    plan = RunPlan(cfg, open_stores(cfg))
    if not 0 <= start < plan.total_steps:
        raise ConfigError(f"--start {start}: the run has steps 0..{plan.total_steps - 1}")
    out = []
    for step in range(start, min(plan.total_steps, start + count)):
        phase, ps = plan.phase_at(step)
        d = phase.mixture.describe(ps)
        d.update({"step": step, "phase": phase.name, "phase_step": ps, "lr": plan.lr_at(step)})
        # epochs over the whole run so far (earlier phases included)
        seen = plan.epochs_seen(step + 1)
        for name, info in d["sources"].items():
            info["epochs_consumed"] = seen.get(name, 0.0)
        out.append(d)
    return out


def _table(rows: list[dict]) -> str:
    lines = []
    for d in rows:
        parts = []
        for name, info in d["sources"].items():
            if info["count"] == 0:
                continue
            ids = info["ids"]
            shown = ", ".join(str(i) for i in ids[:8]) + (", ..." if len(ids) > 8 else "")
            ep = "/".join(str(e) for e in info["epoch"])
            parts.append(f"{name}: {info['count']:>3} seq (epoch {ep}, {info['epochs_consumed']:.2f} done) [{shown}]")
        lines.append(f"step {d['step']:>6} {d['phase']:>10}:{d['phase_step']:<6} lr {d['lr']:.3g}  " + "  |  ".join(parts))
    return "\n".join(lines)


def _run(args) -> int:
    from replaytune import config

    cfg = config.load(args.config, args.set)
    rows = describe_steps(cfg, args.start, args.count)
    print(json.dumps(rows, indent=2) if args.json else _table(rows))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "batches",
        help="show which sequences of which source each step's batch holds",
        description="Compute the batches of a run's steps directly from the step number (the mixture is a "
        "pure function of seed, step and schedule): sequence count and ids per source, and the epoch each "
        "source is in. Nothing is trained.",
    )
    p.add_argument("config", help="run config YAML (as for `replaytune train`)")
    p.add_argument("--start", type=int, default=0, help="first step to show (default 0)")
    p.add_argument("--count", type=int, default=5, help="number of steps to show (default 5)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_run)
