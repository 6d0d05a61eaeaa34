"""``--replay-fraction auto``: the candidates, their runs' layout, and the search's outputs.

The search itself (successive halving, each candidate judged at the same fraction of its own
run) is :mod:`replaytune.search`; ``finetune/run.py`` gives it a ``run_to`` that trains one
candidate's run to a step through the one loop (``stop_at``, then ``--resume`` continues
exactly). Each candidate runs in ``OUT/search/<key>`` (``rho0.5``, ``rho0.5_lr0.0001``); the
chosen one is finished there and becomes the fine-tune's model. A killed search reruns to the
same choice: every candidate resumes from its checkpoint and the decisions depend on the
held-out losses only.

Outputs: ``OUT/replay_search.json`` (chosen_rho, chosen_lr, candidates with rho, lr,
target_loss, generic_loss, steps_run, eliminated_at; steps_computed and steps_grid),
``replay_search.md`` and ``replay_search.png`` (target and generic loss vs rho, the choice
marked), written before ``finetune.json``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Callable

from replaytune import rundir
from replaytune.finetune.config import FinetuneConfig
from replaytune.finetune.phase import FinetuneTrainer, build_run_config
from replaytune.finetune.plan import ReplayPlan, plan_for
from replaytune.fsio import write_bytes, write_text
from replaytune.schedule import GENERIC, TARGET
from replaytune.search import Candidate, SearchResult

SEARCH_DIR = "search"
JSON, MD, PNG = "replay_search.json", "replay_search.md", "replay_search.png"


def candidates(cfg: FinetuneConfig, stores: dict[str, Any], epochs: float) -> list[tuple[Candidate, FinetuneConfig, ReplayPlan]]:
    """(candidate, its settings, its replay plan) for every rho x LR of the search, in order."""
    out = []
    for rho in cfg.replay_candidates:
        for lr in cfg.lr_candidates or [None]:
            c_cfg = cfg.model_copy(update={"replay_fraction": float(rho), "lr": lr if lr is not None else cfg.lr})
            plan = plan_for(cfg, stores, replay_fraction=float(rho), epochs=epochs)
            out.append((Candidate(float(rho), lr, plan.steps), c_cfg, plan))
    if cfg.replay_schedule is not None:  # --replay-schedule under auto: the ramp is one more candidate
        shape = cfg.replay_schedule if isinstance(cfg.replay_schedule, str) else json.dumps(cfg.replay_schedule)
        for lr in cfg.lr_candidates or [None]:
            c_cfg = cfg.model_copy(update={"replay_fraction": None, "lr": lr if lr is not None else cfg.lr})
            plan = plan_for(c_cfg, stores, replay_fraction=0.0, epochs=epochs)
            out.append((Candidate(plan.replay_fraction, lr, plan.steps, shape), c_cfg, plan))
    return out


def run_dir(out: Path, candidate: Candidate) -> Path:
    return out / SEARCH_DIR / candidate.key


def write_outputs(out: Path, result: SearchResult) -> dict[str, Any]:
    """replay_search.json, .md and .png (each atomically); returns the JSON content."""
    data = result.to_dict()
    write_text(out / MD, _markdown(data))
    try:
        write_bytes(out / PNG, _plot(data))
    except ImportError:  # matplotlib missing: the numbers are in the JSON and the table
        pass
    write_text(out / JSON, json.dumps(data, indent=2) + "\n")
    return data


def _markdown(d: dict[str, Any]) -> str:
    lr = "" if d["chosen_lr"] is None else f", LR {d['chosen_lr']:g}"
    lines = [
        "# Replay fraction search", "",
        f"Chosen: **rho = {d['chosen_rho']:g}**{lr}. Computed {d['steps_computed']:,} training steps of the "
        f"{d['steps_grid']:,} that running every candidate to the end would take "
        f"({d['fraction_of_grid']:.0%}).", "",
        f"Successive halving: every candidate is evaluated at {', '.join(f'{f:g}' for f in d['rungs'])} of its own run "
        f"(the same target epochs for all); the best half goes on"
        + (f"; a candidate more than {d['margin']:g} nats behind the best stops" if d["margin"] else "")
        + (f"; the forgetting budget is {d['max_forgetting']:g} nats of generic loss over the base model's "
           f"{d['base_generic_loss']:.4f}" if d["max_forgetting"] is not None else "") + ".", "",
        "| rho | lr | held-out target loss | held-out generic loss | steps run / full | stopped at |",
        "|---|---|---|---|---|---|",
    ]
    for c in d["candidates"]:
        mark = " (chosen)" if _is_chosen(c, d) else ""
        g = "-" if c["generic_loss"] is None else f"{c['generic_loss']:.4f}"
        stop = "-" if c["eliminated_at"] is None else f"{c['eliminated_at']:g} of its run"
        lines.append(f"| {c['rho']:g}{' (' + c['schedule'] + ')' if c.get('schedule') else ''}{mark} | {'-' if c['lr'] is None else format(c['lr'], 'g')} | "
                     f"{c['target_loss']:.4f} | {g} | {c['steps_run']} / {c['steps_full']} | {stop} |")
    lines += ["", "Losses are each candidate's latest evaluation: a candidate stopped early is compared at "
              "fewer epochs than the finished ones. What the search can get wrong: a candidate that learns "
              "the target slowly but ends best can be stopped early (see replaytune.search).", ""]
    if d.get("note"):
        lines += [f"Note: {d['note']}.", ""]
    return "\n".join(lines)


def _plot(d: dict[str, Any]) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.5, 3.8), dpi=120, layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, key, title in ((axes[0], "target_loss", "held-out target loss"), (axes[1], "generic_loss", "held-out generic loss")):
        for c in d["candidates"]:
            if c[key] is None:
                continue
            done = c["eliminated_at"] is None
            ax.plot([c["rho"]], [c[key]], "o" if done else "x", color="#1f77b4" if done else "#999999", ms=8)
            if _is_chosen(c, d):
                ax.plot([c["rho"]], [c[key]], "*", color="#d62728", ms=18, label="chosen")
        ax.set_xlabel("replay fraction rho")
        ax.set_ylabel(title + " (nats/token)")
        ax.set_title(title + " (x: stopped early, at fewer epochs)", fontsize=9)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Replay fraction search: {d['steps_computed']:,} of {d['steps_grid']:,} grid steps")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def run_search(cfg: FinetuneConfig, stores, paths, out: Path, epochs: float, say: Callable[[str], None]):
    """Run the replay-fraction search (replaytune.search) with each candidate in OUT/search/<key>."""
    from replaytune.finetune.forgetting import side_loss
    from replaytune.search import Outcome, rung_step, successive_halving
    from replaytune.train.metrics import read_metrics

    cands = candidates(cfg, stores, epochs)
    by_key = {c.key: (c_cfg, plan) for c, c_cfg, plan in cands}

    def run_to(c, step: int) -> Outcome:
        c_cfg, plan = by_key[c.key]
        where = run_dir(out, c)
        run_cfg = build_run_config(c_cfg, plan, paths, where, out / "tokenizer")
        trainer = FinetuneTrainer(run_cfg, resume=rundir.is_started(where), stop_at=step,
                                  activation_checkpointing=cfg.activation_checkpointing)
        ev = trainer.run()["final"]["eval"]
        return Outcome(side_loss(ev, plan.side_parts(TARGET)), side_loss(ev, plan.side_parts(GENERIC)))

    from replaytune.search import FRACTIONS as fractions

    base_generic = None
    if cfg.max_forgetting is not None:  # the base model's generic loss: the first candidate's step-0 evaluation
        first = cands[0][0]
        run_to(first, rung_step(first, fractions[0]))
        step0 = next(m["eval"] for m in read_metrics(run_dir(out, first)) if m["kind"] == "eval" and m["step"] == 0)
        base_generic = side_loss(step0, cands[0][2].side_parts(GENERIC))
    say("replay fraction search: " + ", ".join(f"{c.key} ({c.steps} steps)" for c, _, _ in cands))
    return successive_halving([c for c, _, _ in cands], run_to, fractions=fractions, margin=cfg.search_margin,
                              base_generic=base_generic, max_forgetting=cfg.max_forgetting, log=say)


def _is_chosen(c: dict[str, Any], d: dict[str, Any]) -> bool:
    return (c["rho"], c["lr"], c.get("schedule")) == (d["chosen_rho"], d["chosen_lr"], d.get("chosen_schedule"))
