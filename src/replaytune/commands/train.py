"""``replaytune train CONFIG.yaml``: one run (pre-training, fine-tuning or mid-training)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from replaytune.commands import REPORT_TO_METAVAR, report_override, report_to

DESCRIPTION = """\
Train one run: a model and a list of phases (steps, mixture schedule, LR schedule,
optimizer reset), as described by CONFIG.yaml (see examples/). Writes OUT/config.yaml,
OUT/metrics.jsonl (a line per step and per evaluation), OUT/checkpoints/, OUT/model/
(save_pretrained) and, last, OUT/record.json.

Several processes: torchrun --nproc_per_node N -m replaytune.cli train CONFIG.yaml
(DDP; add --set parallel=fsdp to shard big models)."""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train",
        help="train one run from a config file",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", metavar="CONFIG.yaml", help="run config (model, data, phases, optim, eval, checkpoint)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config field, e.g. --set phases.0.lr.peak=1e-3 (repeatable; VALUE is YAML)",
    )
    p.add_argument("--out", metavar="DIR", help="run directory (default: the config's out_dir)")
    p.add_argument("--report-to", type=report_to, metavar=REPORT_TO_METAVAR,
                   help="also log to these trackers, comma-separated (metrics.jsonl is always written)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the run directory")
    p.add_argument(
        "--init-from", metavar="CHECKPOINT",
        help="branch from another run's checkpoint folder; refused unless both runs agree on every step before it",
    )
    p.add_argument(
        "--save-at", metavar="STEPS", default="",
        help="comma-separated extra steps to checkpoint and keep (branch points), e.g. 100,200",
    )
    p.set_defaults(func=run)


def _steps(text: str) -> list[int]:
    from replaytune.errors import ConfigError

    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--save-at {text!r}: expected comma-separated step numbers, e.g. 100,200") from None


def run(args: argparse.Namespace) -> int:
    from replaytune import config
    from replaytune.train import train

    cfg = config.load(args.config, args.overrides + report_override(args))
    record = train(cfg, resume=args.resume, init_from=args.init_from, save_at=_steps(args.save_at), out_dir=args.out)
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun, rank 0 speaks for all
    final = record.get("final", {}).get("eval") or {}
    losses = ", ".join(f"{k} {v:.4f}" for k, v in final.items() if v is not None)
    print(f"{record['name']}: {record['steps']} steps, {record['tokens_per_s']:,.0f} tokens/s; final eval loss: {losses}")
    return 0
