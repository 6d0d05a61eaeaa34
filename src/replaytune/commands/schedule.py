"""``replaytune schedule``: print the paper's schedules (fine-tuning budget, two-stage, uniform) and ramps."""

from __future__ import annotations

import argparse
import io
import json

from replaytune import ramp as ramps
from replaytune import schedule as sched
from replaytune.fsio import write_bytes


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


def _ramp_table(info: dict) -> str:
    lines = [f"{k:>18}: {info[k]:.6g}" if isinstance(info[k], float) else f"{k:>18}: {info[k]}"
             for k in ("setting", "steps", "target_steps", "epochs", "gamma", "mean_target_weight") if k in info]
    pts = info["ramp"]["points"]
    names = list(pts[0]["weights"])
    header = f"{'t':>8} {'step':>8} {'rho':>8} " + " ".join(f"{n:>10}" for n in names)
    lines += ["", header, "-" * len(header)]
    for (t, rho), p in zip(info["rho_points"], pts) if len(pts) == len(info["rho_points"]) else []:
        lines.append(f"{t:>8.4f} {t * info['steps']:>8.1f} {rho:>8.4f} " + " ".join(f"{p['weights'][n]:>10.4f}" for n in names))
    if len(pts) != len(info["rho_points"]):  # refined for units: the sequence weights at every point
        for p in pts:
            lines.append(f"{p['t']:>8.4f} {p['t'] * info['steps']:>8.1f} {'':>8} " + " ".join(f"{p['weights'][n]:>10.4f}" for n in names))
    return "\n".join(lines)


def _ramp(args) -> int:
    shape = ramps.shape_points(args.shape, lr_schedule=args.lr_schedule, decay=args.decay)
    if args.steps is not None:
        if args.target_fraction is None:
            raise sched.ScheduleError("schedule ramp --steps: give --target-fraction (gamma) too")
        plan = ramps.midtrain_ramp(args.steps, args.target_fraction, shape)
    else:
        if args.target_steps is None or args.epochs is None:
            raise sched.ScheduleError("schedule ramp: give --target-steps and --epochs (fine-tuning) "
                                      "or --steps and --target-fraction (mid-training)")
        plan = ramps.finetune_ramp(args.target_steps, args.epochs, shape)
    info = plan.to_dict()
    if args.plot:
        _plot(plan, args.shape if isinstance(args.shape, str) else "ramp", args.plot)
    print(json.dumps(info, indent=2) if args.json else _ramp_table(info))
    return 0


def _plot(plan, title: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    steps = np.arange(plan.steps + 1)
    cum = plan.ramp.cumulative(steps)
    per = np.diff(cum, axis=0)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for i, name in enumerate(plan.ramp.sources):
        ax.plot(steps[:-1], per[:, i], label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("share of the batch (sequences)")
    ax.set_ylim(0, 1)
    ax.set_title(f"{title}: {plan.steps} steps")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=path.rsplit(".", 1)[-1] if "." in path else "png")
    plt.close(fig)
    write_bytes(path, buf.getvalue())


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

    r = kinds.add_parser(
        "ramp",
        help="a continuous replay schedule: rho at points, linear between them",
        description="A replay ramp (replaytune.ramp). Fine-tuning (--target-steps, --epochs): the target epochs "
        "stay exact and the phase length is solved. Mid-training (--steps, --target-fraction): the shape 1 - rho(t) "
        "is scaled to hold gamma of target data.",
    )
    r.add_argument("--shape", required=True, help="linear:A:B, upsample-end:K:A:B, follow-lr:A:B or stepped:K:A:B "
                   "(rho from A to B; K: the final fraction, or the number of steps up)")
    r.add_argument("--target-steps", type=float, help="fine-tuning: unique target data, in batches")
    r.add_argument("--epochs", type=float, help="fine-tuning: passes over the target data")
    r.add_argument("--steps", type=int, help="mid-training: total steps N of the run")
    r.add_argument("--target-fraction", type=float, help="mid-training: gamma, the run's fraction of target data")
    r.add_argument("--lr-schedule", default="wsd", choices=sched.LR_SCHEDULES,
                   help="where follow-lr and stepped sit (default wsd)")
    r.add_argument("--decay", type=float, default=0.1, help="WSD decay fraction (default 0.1)")
    r.add_argument("--plot", metavar="FILE", help="also draw the per-step shares to FILE (png, pdf, svg)")
    r.add_argument("--json", action="store_true", help="print JSON instead of a table")
    r.set_defaults(func=_ramp)
