"""How well and how cheaply the replay-fraction search picks rho, on the demo's fine-tuning setup.

Usage: python benchmarks/bench_replay_search.py --demo demo-out [--targets basque,python] [--seeds 0,1,2]

Setup (the demo's, README "The main job"): the demo's tokenizer and stores; a `tiny` Llama
pre-trained on the generic store for 480 steps (WSD, peak 3e-3: the pre-training of the demo's
rho = 0 fine-tuning run); then fine-tuning on one batch of unique target data (16 sequences of
128 tokens, seed s = the s-th disjoint draw) for 32 epochs at peak LR 3e-4 (cosine), with replay
rho in the search's default candidates {0, .25, .5, .75, .875}.

The full grid is trained (every rho and seed to the end, evaluated at every rung of the search
as well): the best rho of the grid is the one with the lowest mean final held-out target loss,
and the seed-to-seed std is pooled over the rho values. The search is then replayed on the
recorded held-out losses of each seed (evaluations do not change training, so reading the loss
a candidate had at a rung is exactly what the search would have measured there), giving its
choice and the steps it would have computed. Prints one line per (target, seed) and a summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from replaytune import config, rundir
from replaytune.study import sweep
from replaytune.search import Candidate, Outcome, rung_steps, successive_halving
from replaytune.schedule import finetune as finetune_schedule
from replaytune.train import read_metrics, train

RHOS = (0.0, 0.25, 0.5, 0.75, 0.875)
SEQ, BATCH, EPOCHS, LR, PRE_STEPS = 128, 16, 32, 3e-4, 480


def pretrain_config(demo: Path, out: Path) -> config.RunConfig:
    return config.validate({
        "name": "pretrain", "out_dir": str(out / "pretrain"),
        "model": {"preset": "tiny", "tokenizer": str(demo / "data" / "tokenizer")},
        "data": {"sources": {"generic": {"store": str(demo / "data" / "stores" / "generic")}}, "seq_len": SEQ,
                 "batch_size": BATCH},
        "phases": [{"name": "pretrain", "steps": PRE_STEPS, "constant": "generic",
                    "lr": {"peak": 3e-3, "schedule": "wsd", "warmup": 0.01, "decay": 0.1}}],
        "eval": {"interval": 0, "sequences": 64}, "progress": False,
    })


def finetune_config(demo: Path, out: Path, target: str, rho: float, seed: int) -> tuple[config.RunConfig, Candidate]:
    steps = finetune_schedule(1, EPOCHS, rho).steps
    cand = Candidate(rho, None, steps)
    rungs = rung_steps(steps)
    cfg = config.validate({
        "name": f"{target}_{cand.key}_s{seed}", "out_dir": str(out / "grid"),
        "model": {"pretrained": str(out / "pretrain" / rundir.MODEL)},
        "data": {"sources": {target: {"store": str(demo / "data" / "stores" / target), "sequences": BATCH,
                                      "first": seed * BATCH},
                             "generic": {"store": str(demo / "data" / "stores" / "generic")}},
                 "seq_len": SEQ, "batch_size": BATCH},
        "phases": [{"name": "finetune", "finetune": {"target_steps": 1, "epochs": EPOCHS, "replay": rho, "target": target},
                    "lr": {"peak": LR, "schedule": "cosine", "warmup": 0.01}, "seed": seed, "eval_at": rungs}],
        "eval": {"interval": 0, "sequences": 64}, "checkpoint": {"interval": 0, "keep": 1}, "progress": False,
    })
    return cfg, cand


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", default="demo-out", help="a finished demo output folder (its stores and tokenizer)")
    ap.add_argument("--out", default="bench-replay-search", help="where the runs go")
    ap.add_argument("--targets", default="basque,python")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    demo, out = Path(args.demo), Path(args.out)
    targets = [t for t in args.targets.split(",") if t]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    pre = pretrain_config(demo, out)
    if not rundir.is_finished(pre.out_dir):
        train(pre, resume=rundir.is_started(pre.out_dir))
    grid = {(t, r, s): finetune_config(demo, out, t, r, s) for t in targets for r in RHOS for s in seeds}
    tasks = sweep.build_tasks([cfg for cfg, _ in grid.values()], out / "grid", share_prefixes=False)
    sweep.execute(tasks, workers=args.workers)
    evals = {key: {m["step"]: m["eval"] for m in read_metrics(t.run_dir) if m["kind"] == "eval"}
             for key, t in zip(grid, tasks)}
    summary = {}
    for t in targets:
        final = {r: [evals[(t, r, s)][grid[(t, r, s)][1].steps][t] for s in seeds] for r in RHOS}
        mean = {r: statistics.fmean(v) for r, v in final.items()}
        best = min(RHOS, key=lambda r: mean[r])
        devs = [(x - mean[r]) ** 2 for r in RHOS for x in final[r]]
        std = (sum(devs) / (len(devs) - len(RHOS))) ** 0.5 if len(seeds) > 1 else float("nan")
        rows = []
        for s in seeds:
            def run_to(c: Candidate, step: int, s=s) -> Outcome:
                ev = evals[(t, c.rho, s)][step]
                return Outcome(ev[t], ev.get("generic"))

            res = successive_halving([grid[(t, r, s)][1] for r in RHOS], run_to)
            rho = res.chosen.candidate.rho
            rows.append({"seed": s, "chosen": rho, "chosen_mean_loss": mean[rho], "steps_computed": res.steps_computed,
                         "steps_grid": res.steps_grid, "within_std": mean[rho] - mean[best] <= std})
            print(f"{t} seed {s}: search chose rho {rho:g} (grid mean {mean[rho]:.4f}; best rho {best:g} {mean[best]:.4f}, "
                  f"std {std:.4f}), {res.steps_computed} of {res.steps_grid} steps ({res.steps_computed / res.steps_grid:.0%})")
        summary[t] = {"mean_final": mean, "best": best, "std": std, "searches": rows}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    ok = sum(r["within_std"] for v in summary.values() for r in v["searches"])
    n = sum(len(v["searches"]) for v in summary.values())
    frac = [r["steps_computed"] / r["steps_grid"] for v in summary.values() for r in v["searches"]]
    print(f"choices within one seed std of the grid's best: {ok} of {n}; steps: {min(frac):.0%}-{max(frac):.0%} of the grid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
