"""``replaytune schedule``: print the paper's schedules (fine-tuning budget, two-stage, uniform)."""

from __future__ import annotations

import argparse
import json

from replaytune import schedule as sched


def _table(info: dict) -> str:
    lines = []
    for key in ("setting", "steps", "target_steps", "epochs", "gamma", "replay", "alpha", "delta", "switch_step"):
        if key in info:
            val = info[key]
            lines.append(f"{key:>12}: {val:.6g}" if isinstance(val, float) else f"{key:>12}: {val}")
    lines.append("")
    names = list(info["stages"][0]["weights"])
    header = f"{'stage':>5} {'start_step':>10} " + " ".join(f"{n:>10}" for n in names)
    lines.append(header)
    lines.append("-" * len(header))
    for i, st in enumerate(info["stages"]):
        lines.append(f"{i:>5} {st['start_step']:>10} " + " ".join(f"{st['weights'][n]:>10.4f}" for n in names))
    return "\n".join(lines)


def _emit(info: dict, as_json: bool) -> int:
    print(json.dumps(info, indent=2) if as_json else _table(info))
    return 0


def _finetune(args) -> int:
    plan = sched.finetune(args.target_steps, args.epochs, args.replay)
    return _emit(plan.to_dict(), args.json)


def _two_stage(args) -> int:
    plan = sched.two_stage(args.steps, args.target_fraction, args.replay, args.stage2_allocation)
    return _emit(plan.to_dict(), args.json)


def _uniform(args) -> int:
    s = sched.uniform(args.target_fraction)
    return _emit({"setting": "uniform", "steps": args.steps, "gamma": args.target_fraction, **s.to_dict()}, args.json)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "schedule",
        help="show the paper's mixture schedules (stages, weights, switch step)",
        description="Compute the paper's replay schedules (docs/method.md) and print their stages. Impossible "
        "inputs (rho >= 1, Stage 2 longer than the run, ...) exit with status 2 and one line.",
    )
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)

    f = kinds.add_parser(
        "finetune",
        help="fine-tuning with replay: steps = target_steps * epochs / (1 - rho)",
        description="Fine-tuning stage with replay fraction rho. Target epochs stay fixed; the stage grows "
        "to target_steps * epochs / (1 - rho) steps (rounded up), the extra steps being generic data.",
    )
    f.add_argument("--target-steps", type=int, required=True, help="unique target data, in batches")
    f.add_argument("--epochs", type=float, required=True, help="passes over the target data")
    f.add_argument("--replay", type=float, default=0.0, help="replay fraction rho in [0, 1) (default 0)")
    f.add_argument("--json", action="store_true", help="print JSON instead of a table")
    f.set_defaults(func=_finetune)

    t = kinds.add_parser(
        "two-stage",
        help="mid-training: gamma, rho, alpha -> delta, stage weights, switch step",
        description="Two-stage mid-training. delta = gamma*alpha/(1-rho); Stage 2 (target weight 1-rho) "
        "starts at floor((1-delta)*steps); Stage 1 target weight gamma*(1-alpha)/(1-delta).",
    )
    t.add_argument("--steps", type=int, required=True, help="total steps N of the run")
    t.add_argument("--target-fraction", type=float, required=True, help="gamma: fraction of all steps on target data")
    t.add_argument("--replay", type=float, default=0.0, help="rho: generic share of Stage 2 (default 0)")
    t.add_argument("--stage2-allocation", type=float, default=1.0, help="alpha: share of target data in Stage 2 (default 1)")
    t.add_argument("--json", action="store_true", help="print JSON instead of a table")
    t.set_defaults(func=_two_stage)

    u = kinds.add_parser("uniform", help="target mixed uniformly through the run (reference runs)")
    u.add_argument("--steps", type=int, required=True, help="total steps of the run")
    u.add_argument("--target-fraction", type=float, required=True, help="gamma: target weight of every batch")
    u.add_argument("--json", action="store_true", help="print JSON instead of a table")
    u.set_defaults(func=_uniform)
