"""Running ``replaytune finetune``: check, prepare, train through the one loop, write the outputs.

The settings and sources live in :mod:`replaytune.finetune.config`, the checks in
:mod:`~replaytune.finetune.checks` and :mod:`~replaytune.finetune.plan`, the run config in
:mod:`~replaytune.finetune.phase`, the outputs in :mod:`~replaytune.finetune.outputs` and the
evaluation in :mod:`~replaytune.finetune.evaluate`; this module sequences the work and keeps
the output directory honest:

* everything that can fail on bad input (model path, tokenizer, chat template, sources,
  the examples themselves) fails before training, and a directory this call created is
  removed again, so a failed start leaves nothing behind;
* once training has started, a failure leaves ``run/`` with its checkpoints (``--resume``
  continues it) and no ``model/`` or ``finetune.json``: the directory does not look done;
* ``model/`` / ``adapter/`` appear by rename, and ``finetune.json`` is written last.

Under torchrun every rank runs this; rank 0 alone tokenizes (the others wait at a barrier
and are told if it failed), writes the outputs and prints.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from replaytune import config as rconfig
from replaytune import rundir
from replaytune.data.store import TokenStore
from replaytune.errors import ReplaytuneError
from replaytune.finetune import search as fsearch
from replaytune.finetune.checks import (
    check_extras,
    check_model,
    check_store_tokenizer,
    check_vocab_early,
    model_tokenizer,
    one_candidate,
)
from replaytune.finetune.config import (
    DEFAULT_EPOCHS,
    MARKER,
    SUMMARY,
    FinetuneConfig,
    Source,
    resolve_sources,
    source_names,
)
from replaytune.finetune.evaluate import check_eval_tasks, held_out_report
from replaytune.finetune.outputs import (
    finalize_model,
    model_card,
    publish_outputs,
    push,
    save_tokenizer,
    short_stats,
)
from replaytune.finetune.phase import FinetuneTrainer, build_run_config
from replaytune.finetune.plan import ReplayPlan, realised_units, replay_plan, spec_for
from replaytune.fsio import write_json, write_text
from replaytune.ramp import shape_points as ramp_points
from replaytune.schedule import GENERIC, TARGET
from replaytune.train.plan import RunPlan

@dataclass
class FinetuneResult:
    output: Path
    summary: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    run_config: rconfig.RunConfig | None = None  # the fine-tune's one-phase run (also under prepare_only)


def prepare_sources(cfg: FinetuneConfig, tok, out: Path, sources: dict[str, Source], *, log: Callable[[str], None] = print) -> dict[str, tuple[TokenStore, dict[str, Any]]]:
    """Token stores of every source under ``out/data/<role>`` (a given store is checked, not copied).

    Chat and instruction examples longer than ``max_example_length`` (default ``seq_len``) are
    truncated and counted, or refused with ``strict``.
    """
    from replaytune.data.prepare import format_stats, prepare

    result = {}
    for role, src in sorted(sources.items(), key=lambda kv: kv[1].role != TARGET):  # the target first: it sizes the replay
        if src.store is not None:
            store = TokenStore(src.store)
            check_store_tokenizer(role, store, tok)
            result[role] = (store, {**store.meta.get("stats", {}), "given_store": True})
            continue
        max_length = None if src.kind == "text" else (cfg.max_example_length or cfg.seq_len)
        cap = _replay_cap(cfg, src, result) if src.role != TARGET and src.kind == "text" else None
        store, stats = prepare(
            src.spec(cfg.strict), tok, out / "data" / role, seed=cfg.seed, max_length=max_length,
            chat_template=cfg.chat_template, skip_invalid=cfg.skip_invalid, progress=cfg.progress, **src.val(),
            max_tokens=cap, packing=None if src.arg.packing == "auto" else src.arg.packing, seq_len=cfg.seq_len,
        )
        log(format_stats(f"{role} ({src.arg.path})", stats, store.path))
        result[role] = (store, stats)
    return result


def _replay_cap(cfg: FinetuneConfig, src: Source, prepared: dict[str, tuple[TokenStore, Any]]) -> int | None:
    """Tokens of a text replay source worth tokenizing: what the largest replay fraction draws (its part of it)."""
    from replaytune.finetune.plan import replay_read_cap

    rho = max(cfg.replay_candidates) if cfg.auto_replay else cfg.rho
    if cfg.replay_schedule is not None:  # a ramp draws no more replay than its largest rho held throughout
        rho = max(rho if cfg.auto_replay else 0.0, *(r for _, r in ramp_points(cfg.replay_schedule)))
    target_args = {n: arg for n, (side, arg) in source_names(cfg).items() if side == TARGET}
    targets = {n: prepared[n][0] for n in target_args}
    epochs = cfg.epochs if cfg.epochs is not None else max(DEFAULT_EPOCHS.get(t.kind, 1.0) for t in targets.values())
    part = src.arg.weight / sum(arg.weight for arg in cfg.replay_sources)
    return replay_read_cap(targets, replay_fraction=rho, epochs=epochs, seq_len=cfg.seq_len, batch_size=cfg.batch_size,
                           unit=cfg.replay_unit, val_fraction=src.val().get("val_fraction"),
                           eval_sequences=cfg.eval_sequences, weights={n: a.weight for n, a in target_args.items()},
                           part=part)


def run_finetune(
    cfg: FinetuneConfig, *, resume: bool = False, prepare_only: bool = False, log: Callable[[str], None] | None = None
) -> FinetuneResult:
    """Fine-tune ``cfg.model`` on the target with replay; see the package and module docstrings.

    ``prepare_only``: tokenize the sources, print the plan and stop (run it once, in one
    process, before a multi-GPU launch: there the other ranks wait for rank 0's tokenizing
    at a barrier, and a long wait can pass the process group's timeout).
    """
    from replaytune.train.distributed import setup, teardown

    dist = setup(cfg.device)
    say = (log or print) if dist.is_main else (lambda text: None)
    out = Path(cfg.output).expanduser()
    lock = rundir.RunLock(out) if dist.is_main else None  # one finetune per --output (taken after the checks)
    try:
        return _run(cfg, out, dist, resume, say, prepare_only, lock)
    finally:
        if lock is not None:
            lock.release()
        teardown(dist)


def _run(cfg: FinetuneConfig, out: Path, dist, resume: bool, say: Callable[[str], None], prepare_only: bool = False,
         lock: rundir.RunLock | None = None) -> FinetuneResult:
    from replaytune.data import chat
    from replaytune.finetune.forgetting import format_report

    if (out / SUMMARY).is_file():
        if not resume:
            raise ReplaytuneError(f"{out}: holds a finished fine-tune ({SUMMARY}); choose another --output")
        report = json.loads((out / "forgetting.json").read_text())
        say(format_report(report))
        return FinetuneResult(out, json.loads((out / SUMMARY).read_text()), report)
    if out.exists() and (not out.is_dir() or (any(p.name != rundir.LOCK for p in out.iterdir())
                                               and not (out / MARKER).exists())):
        raise ReplaytuneError(f"{out}: exists and is not a replaytune finetune output; choose another --output")

    # Cheap checks first: nothing is written until they pass.
    cfg = one_candidate(cfg, say)
    check_extras(cfg)
    check_model(cfg)
    tok = model_tokenizer(cfg)
    check_vocab_early(cfg, tok)
    sources = resolve_sources(cfg)
    template = None
    if any(s.kind == "chat" for s in sources.values()):
        template = chat.resolve_template(tok, chat.load_template(cfg.chat_template), str(getattr(tok, "name_or_path", cfg.model)))
    epochs = cfg.epochs if cfg.epochs is not None else max(DEFAULT_EPOCHS[s.kind] for s in sources.values() if s.role == TARGET)

    created = not out.exists()
    if lock is not None:
        lock.acquire()  # a second finetune on this --output is refused here, with the holder's pid and host
    started = False
    search = None
    try:
        prepared: dict[str, tuple[TokenStore, dict[str, Any]]] = {}
        tasks = None
        if dist.is_main:
            try:
                tasks = check_eval_tasks(cfg)  # an unknown task fails before anything is written
                out.mkdir(parents=True, exist_ok=True)
                (out / MARKER).touch()
                prepared = prepare_sources(cfg, tok, out, sources, log=say)
                save_tokenizer(tok, template if cfg.chat_template else None, out / "tokenizer")
            except BaseException as exc:
                dist.broadcast(str(exc) if isinstance(exc, ReplaytuneError) else type(exc).__name__)
                raise
            dist.broadcast("ok")
        else:
            status = dist.broadcast(None)
            if status != "ok":
                raise ReplaytuneError(f"rank 0 could not prepare the data: {status}")
        paths = {role: (src.store or out / "data" / role) for role, src in sources.items()}
        stores = {role: prepared[role][0] if role in prepared else TokenStore(p) for role, p in paths.items()}
        run_dir = out / "run"
        if cfg.auto_replay:
            if prepare_only:
                cands = fsearch.candidates(cfg, stores, epochs)
                say("replay fraction search over: " + ", ".join(f"{c.key} ({c.steps} steps)" for c, _, _ in cands))
                return FinetuneResult(out, {"search": [{"rho": c.rho, "lr": c.lr, "steps": c.steps} for c, _, _ in cands]})
            started = True  # candidates' runs exist from here on: a failure leaves them for --resume
            search = fsearch.run_search(cfg, stores, paths, out, epochs, say)
            chosen = search.chosen.candidate
            cfg = cfg.model_copy(update={"replay_fraction": None if chosen.schedule else chosen.rho,
                                         "replay_schedule": chosen.schedule, "lr": chosen.lr if chosen.lr is not None else cfg.lr})
            run_dir = fsearch.run_dir(out, chosen)
        # the run's one plan: the spec goes into the run config, the loop's RunPlan resolves it, and the
        # same RunPlan is described here and trained on (under auto too: the chosen rho is planned once)
        run_cfg = build_run_config(cfg, spec_for(cfg, stores, epochs=epochs), paths, run_dir, out / "tokenizer")
        run_plan = RunPlan(run_cfg, stores)
        plan = replay_plan(run_plan)
        realised = _realised(run_cfg, stores, plan)
        if dist.is_main:
            say(_describe(plan, realised))
        if prepare_only:
            return FinetuneResult(out, {"plan": {**plan.to_dict(), "realised": realised}}, run_config=run_cfg)
        resume_run = (resume or search is not None) and rundir.is_started(run_dir)  # the search finished the chosen run
        trainer = FinetuneTrainer(run_cfg, resume=resume_run, activation_checkpointing=cfg.activation_checkpointing,
                                  plan=run_plan)
        started = True
        t0 = time.perf_counter()
        record = trainer.run()
        train_s = time.perf_counter() - t0
    except BaseException:
        if created and not started and dist.is_main:
            shutil.rmtree(out, ignore_errors=True)  # nothing half-written
        raise

    result = FinetuneResult(out)
    if dist.is_main:
        outputs = finalize_model(cfg, run_cfg, trainer, out)
        trainer = None  # the trained model's memory is free for the downstream evaluation
        if not (cfg.keep_checkpoints or cfg.save_total_limit):
            for ck_dir in [run_dir, *((out / fsearch.SEARCH_DIR).glob("*") if search is not None else [])]:
                shutil.rmtree(Path(ck_dir) / rundir.CHECKPOINTS, ignore_errors=True)
        result.report = held_out_report(cfg, run_cfg, stores, plan, record, out, say, tasks)
        result.summary = {
            "settings": cfg.model_dump(mode="json"),
            "epochs": epochs,
            "plan": {**plan.to_dict(), "realised": realised},
            "data": {role: {"source": sources[role].arg.path, "kind": sources[role].kind, "store": str(paths[role]),
                            "stats": short_stats(prepared[role][1])} for role in sources},
            "run": {k: record.get(k) for k in ("steps", "tokens", "epochs", "wall_time_s", "tokens_per_s")},
            "final_eval": record.get("final", {}).get("eval"),
            "outputs": outputs,
            "seconds": round(train_s, 3),
        }
        if search is not None:
            result.summary["search"] = fsearch.write_outputs(out, search)
            say(f"replay fraction search: chose rho {chosen.rho:g}" + (f" ({chosen.schedule})" if chosen.schedule else "")
                + ("" if chosen.lr is None else f", LR {chosen.lr:g}")
                + f" ({search.steps_computed:,} of {search.steps_grid:,} grid steps); see {out / fsearch.MD}")
        for folder in ("model", "adapter"):
            if (out / folder).is_dir():
                write_text(out / folder / "README.md", model_card(result.summary, result.report, folder))
        top = publish_outputs(cfg, out)
        result.summary["top_level"] = top["files"]  # OUT itself loads (finetune/outputs.py)
        result.summary["save_dtype"] = top["dtype"]
        write_json(out / SUMMARY, result.summary)  # last: marks the fine-tune finished
        say(f"outputs in {out}: " + ", ".join(f"{k} {v}" for k, v in outputs.items())
            + f"; from_pretrained({out}) loads the {'model' if (out / 'model').is_dir() else 'adapter'}")
        if cfg.push_to_hub:
            say(f"pushed to {push(out, cfg.hub_model_id, private=cfg.hub_private_repo, files=top['files'])}")
    dist.barrier()
    return result


def _realised(run_cfg: rconfig.RunConfig, stores: dict[str, TokenStore], plan: ReplayPlan) -> dict[str, Any]:
    """What the run's exact mixture draws: loss tokens (or the unit) per source, target epochs."""
    mixture = plan.mixture
    units = realised_units(mixture, stores, plan.seq_len, plan.unit)
    total = sum(units.values())
    drawn, epochs = mixture.consumed(mixture.steps), mixture.epochs_consumed()

    def side_epochs(role: str) -> float:  # passes over the side's sequences, all its sources together
        names = plan.side(role)
        return sum(drawn[n] for n in names) / sum(plan.sequences[n] for n in names) if names else 0.0

    out = {
        plan.unit: units,
        "replay_share": (sum(units[n] for n in plan.side(GENERIC)) / total) if total else 0.0,
        "sequences": drawn,
        "target_epochs": side_epochs(TARGET) if plan.several else epochs[TARGET],
        "replay_epochs": side_epochs(GENERIC) if plan.several else epochs.get(GENERIC, 0.0),
    }
    if plan.several:
        out["shares"] = {n: (u / total if total else 0.0) for n, u in units.items()}
        out["epochs"] = epochs
    return out


def _describe(plan: ReplayPlan, realised: dict[str, Any]) -> str:
    w = plan.weights
    plain = math.ceil(plan.target_sequences * plan.epochs / plan.batch_size - 1e-9)
    replay_seqs = sum(plan.sequences[n] for n in plan.side(GENERIC))
    lines = [
        f"plan: target {plan.target_sequences:,} sequences of {plan.seq_len} ({plan.target_batches:.4g} batches of "
        f"{plan.batch_size}) x {plan.epochs:g} epochs; replay fraction {plan.replay_fraction:g} counted in {plan.unit}",
        "  sequence weights: " + ", ".join(f"{k} {v:.4f}" for k, v in w.items())
        + f"; steps {plan.to_dict()['steps_formula']} ({plain:,} without replay)",
        f"  realised: replay {realised['replay_share']:.4f} of {plan.unit}, target {realised['target_epochs']:.3g} epochs"
        + (f", replay {realised['replay_epochs']:.3g} epochs of its {replay_seqs:,} sequences" if replay_seqs else ""),
    ]
    if plan.several:
        lines.append(f"  per source ({plan.unit} share asked -> realised, epochs): " + ", ".join(
            f"{n} {plan.shares[n]:.4f} -> {realised['shares'][n]:.4f}, {realised['epochs'][n]:.3g}" for n in plan.sides))
    if realised["target_epochs"] > 1.1 * plan.epochs:
        warnings.warn(
            f"the target is {plan.target_batches:.3g} batches: rounding up to whole steps shows it "
            f"{realised['target_epochs']:.3g} times instead of {plan.epochs:g}; lower --batch-size for a closer match"
        )
    repeated = [n for n in plan.side(GENERIC) if realised["epochs"][n] > 1.0] if plan.several else []
    if repeated:
        lines.append(f"  note: replay data is repeated ({', '.join(repeated)}); the paper replays fresh generic data "
                     "(give larger replay sets)")
    elif realised["replay_epochs"] > 1.0:
        lines.append("  note: the replay source is repeated; the paper replays fresh generic data (give a larger replay set)")
    return "\n".join(lines)


