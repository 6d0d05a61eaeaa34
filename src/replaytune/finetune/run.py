"""Running ``replaytune finetune``: check, prepare, train through the one loop, write the outputs.

The settings and sources live in :mod:`replaytune.finetune.config`, the arithmetic (replay
weights, steps) in :mod:`replaytune.finetune.plan`; this module sequences the work and keeps
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
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from replaytune import config as rconfig
from replaytune import rundir
from replaytune.data.store import TokenStore
from replaytune.errors import ConfigError, DataError, ReplaytuneError
from replaytune.finetune.config import DEFAULT_EPOCHS, MARKER, SUMMARY, FinetuneConfig, Source, label, resolve_sources, source_names
from replaytune.finetune import search as fsearch
from replaytune.finetune.plan import ReplayPlan, plan_for, realised_units
from replaytune.fsio import replace_dir, temp_dir, write_text
from replaytune.schedule import GENERIC, TARGET
from replaytune.train.loop import Trainer
from replaytune.train.metrics import atomic_write_json

# ------------------------------------------------------------------------------------------
# Model and tokenizer checks (before anything is written)
# ------------------------------------------------------------------------------------------


def check_extras(cfg: FinetuneConfig) -> None:
    """The optional packages the settings need (trackers, lm-evaluation-harness) are installed.

    First of the checks: a missing extra refuses the start at once, not after tokenizing, and
    not (``eval_tasks``) after a whole fine-tune that then skips the evaluation asked for.
    """
    from replaytune import trackers

    trackers.require(cfg.report_to)
    if cfg.eval_tasks:
        try:
            import lm_eval  # noqa: F401
        except ImportError:
            raise ConfigError(f"--eval-tasks {','.join(cfg.eval_tasks)} needs lm-evaluation-harness, which is not "
                              f"installed: pip install 'replaytune[eval]', or drop --eval-tasks") from None


def one_candidate(cfg: FinetuneConfig, say: Callable[[str], None]) -> FinetuneConfig:
    """``auto`` over a single rho (and at most one LR) has nothing to search: say so, and fine-tune with it.

    Otherwise the search would train that one candidate through every rung of successive
    halving, which only adds evaluations.
    """
    if not cfg.auto_replay:
        return cfg
    rhos, lrs = sorted(set(cfg.replay_candidates)), sorted(set(cfg.lr_candidates or []))
    if len(rhos) > 1 or len(lrs) > 1:
        return cfg
    lr = lrs[0] if lrs else cfg.lr
    unchecked = "; --max-forgetting is not applied (the forgetting report shows the rise)" if cfg.max_forgetting else ""
    say(f"replay fraction auto: one candidate (rho {rhos[0]:g}" + ("" if not lrs else f", LR {lr:g}")
        + f"), so nothing to search; fine-tuning with it{unchecked}")
    return cfg.model_copy(update={"replay_fraction": float(rhos[0]), "lr": lr})


def check_model(cfg: FinetuneConfig) -> None:
    """A model path that cannot be a model fails here, before any data is tokenized."""
    from replaytune.model import _looks_like_path, check_4bit

    if cfg.load_in_4bit:
        from replaytune.train.distributed import resolve_device

        check_4bit(resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", 0))))
    local = Path(cfg.model).expanduser()
    if not local.exists():
        if _looks_like_path(cfg.model):
            raise DataError(f"model {cfg.model}: no such file or directory; give a saved model folder, a .gguf file or a hub id")
        from replaytune.hub import require_hub

        require_hub("model", cfg.model)  # a hub id: one quick probe, not a minute of retries
        return
    if cfg.gguf_file:
        if not (local / cfg.gguf_file).is_file():
            raise DataError(f"model {cfg.model}: no GGUF file {cfg.gguf_file!r} in this folder")
    elif local.is_file() or not (local / "config.json").is_file():
        raise DataError(
            f"model {cfg.model}: not a Hugging Face model folder (no config.json); "
            f"for a GGUF model give the .gguf file, or the folder with --gguf-file NAME"
        )


def check_vocab_early(cfg: FinetuneConfig, tok) -> None:
    """A tokenizer with more ids than the model's embedding fails here, before any data is tokenized.

    Read from the model folder's config.json (no weights loaded); GGUF and hub models are
    checked when the model is built (``model.check_vocab``).
    """
    path = Path(cfg.model).expanduser() / "config.json"
    if cfg.gguf_file or not path.is_file():
        return
    try:
        rows = int(json.loads(path.read_text()).get("vocab_size") or 0)
    except (ValueError, OSError):
        return  # the loader gives the precise error
    if rows and len(tok) > rows:
        raise DataError(
            f"vocabulary mismatch: the tokenizer {getattr(tok, 'name_or_path', cfg.tokenizer)} has {len(tok)} ids but the "
            f"model {cfg.model} has {rows} embedding rows; use the model's own tokenizer (drop --tokenizer)"
        )


def load_tokenizer(cfg: FinetuneConfig):
    """The model's tokenizer (or ``cfg.tokenizer``); GGUF models carry theirs in the file."""
    from replaytune.data.tokenizer import load_tokenizer as load

    if cfg.tokenizer:
        return load(cfg.tokenizer)
    if cfg.gguf_file:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(cfg.model, gguf_file=cfg.gguf_file)
        except Exception as exc:  # transformers raises several types for a bad GGUF
            raise DataError(f"model {cfg.model}: cannot read the tokenizer of {cfg.gguf_file} ({type(exc).__name__}: {exc})") from None
        tok.name_or_path = str(Path(cfg.model).expanduser().resolve() / cfg.gguf_file)
        return tok
    return load(cfg.model)


def check_store_tokenizer(role: str, store: TokenStore, tok) -> None:
    """A prepared store must use the model's tokenizer: other ids mean other words to the model."""
    from replaytune.data.tokenizer import tokenizer_fingerprint

    fp = tokenizer_fingerprint(tok)
    if store.tokenizer_fingerprint != fp:
        raise DataError(
            f"{label(role)} source {store.path}: a token store built with tokenizer {store.tokenizer_path} (fingerprint "
            f"{store.tokenizer_fingerprint}), but the model's tokenizer {getattr(tok, 'name_or_path', '')} has fingerprint "
            f"{fp}; its token ids would mean other text to this model, so it cannot be mixed in. Give the raw "
            f"source (text/jsonl/parquet) instead: it is tokenized with the model's tokenizer"
        )


# Run-config fields the finetune flags derive; overriding them with --set would break the plan.
_DERIVED = ("data.", "phases.0.steps", "phases.0.stages", "model.pretrained", "model.gguf_file", "out_dir")


@dataclass
class FinetuneResult:
    output: Path
    summary: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)


class FinetuneTrainer(Trainer):
    """The loop's Trainer, with the pretrained model put in training mode.

    ``from_pretrained`` returns a model in eval mode: dropout (LoRA dropout included) would be
    off, and transformers only recomputes activations (``activation_checkpointing``) in
    training mode. Evaluation switches to eval mode and back by itself.
    """

    def __init__(self, cfg: rconfig.RunConfig, *, activation_checkpointing: bool = False, **kwargs: Any):
        super().__init__(cfg, **kwargs)
        self.activation_checkpointing = activation_checkpointing

    def lr_setting(self, phase_index: int) -> str:
        return "--lr (lr: in a config file)"

    def build_model(self):
        model = super().build_model()
        model.train()
        if self.activation_checkpointing:
            hf = model.get_base_model() if hasattr(model, "get_base_model") else model  # under peft: the HF model
            kwargs = {"use_reentrant": False}  # the reentrant variant needs inputs that require grad (LoRA's do not)
            if hasattr(hf, "activation_checkpointing_enable"):  # transformers >= 5.x name
                hf.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        return model


def prepare_sources(cfg: FinetuneConfig, tok, out: Path, sources: dict[str, Source], *, log: Callable[[str], None] = print) -> dict[str, tuple[TokenStore, dict[str, Any]]]:
    """Token stores of every source under ``out/data/<role>`` (a given store is checked, not copied).

    Chat and instruction examples longer than ``max_length`` (default ``seq_len``) are
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
        max_length = None if src.kind == "text" else (cfg.max_length or cfg.seq_len)
        cap = _replay_cap(cfg, src, result) if src.role != TARGET and src.kind == "text" else None
        store, stats = prepare(
            src.spec(cfg.strict), tok, out / "data" / role, seed=cfg.seed, max_length=max_length,
            chat_template=cfg.chat_template, skip_invalid=cfg.skip_invalid, progress=cfg.progress, **src.val(),
            max_tokens=cap,
        )
        log(format_stats(f"{role} ({src.arg.path})", stats, store.path))
        result[role] = (store, stats)
    return result


def _replay_cap(cfg: FinetuneConfig, src: Source, prepared: dict[str, tuple[TokenStore, Any]]) -> int | None:
    """Tokens of a text replay source worth tokenizing: what the largest replay fraction draws (its part of it)."""
    from replaytune.finetune.plan import replay_read_cap

    rho = max(cfg.replay_candidates) if cfg.auto_replay else cfg.rho
    target_args = {n: arg for n, (side, arg) in source_names(cfg).items() if side == TARGET}
    targets = {n: prepared[n][0] for n in target_args}
    epochs = cfg.epochs if cfg.epochs is not None else max(DEFAULT_EPOCHS.get(t.kind, 1.0) for t in targets.values())
    part = src.arg.weight / sum(arg.weight for arg in cfg.replay_sources)
    return replay_read_cap(targets, replay_fraction=rho, epochs=epochs, seq_len=cfg.seq_len, batch_size=cfg.batch_size,
                           unit=cfg.replay_unit, val_fraction=src.val().get("val_fraction"),
                           eval_sequences=cfg.eval_sequences, weights={n: a.weight for n, a in target_args.items()},
                           part=part)


def build_run_config(cfg: FinetuneConfig, plan: ReplayPlan, stores: dict[str, Path], run_dir: Path, tokenizer_dir: Path | None) -> rconfig.RunConfig:
    """One phase from the pretrained model: the plan's schedule for ``plan.steps`` steps."""
    bad = [o for o in cfg.overrides if o.split("=", 1)[0].strip().startswith(_DERIVED)]
    if bad:
        raise ConfigError(f"--set {bad[0]}: this field follows from the finetune flags; use the flag instead")
    data: dict[str, Any] = {
        "name": cfg.name,
        "out_dir": str(run_dir),
        "seed": cfg.seed,
        "model": {
            "pretrained": cfg.model, "gguf_file": cfg.gguf_file, "attn_implementation": cfg.attn_implementation,
            "tokenizer": str(tokenizer_dir) if tokenizer_dir else None,
            "lora": cfg.lora.model_dump() if cfg.lora is not None else None,
            "weights_dtype": cfg.weights_dtype, "load_in_4bit": cfg.load_in_4bit,
        },
        "data": {
            "sources": {role: {"store": str(p)} for role, p in stores.items()},
            "seq_len": cfg.seq_len, "batch_size": cfg.batch_size, "micro_batch_size": cfg.micro_batch_size, "seed": cfg.seed,
            "document_attention": cfg.document_attention,
        },
        "phases": [{
            "name": "finetune", "steps": plan.steps, "stages": plan.schedule.to_dict()["stages"],
            "lr": {"peak": cfg.peak_lr, "schedule": cfg.lr_schedule, "warmup": cfg.warmup, "final_ratio": cfg.final_lr_ratio},
        }],
        "optim": {"weight_decay": cfg.weight_decay, "grad_clip": cfg.grad_clip},
        "eval": {"sequences": cfg.eval_sequences, "interval": cfg.eval_interval, "at_start": True},  # step 0 = the base model
        "checkpoint": {"interval": cfg.checkpoint_every, "keep": 1},
        "device": cfg.device, "dtype": cfg.dtype, "parallel": cfg.parallel, "progress": cfg.progress,
        "report_to": list(cfg.report_to),
    }
    return rconfig.validate(rconfig.apply_overrides(data, cfg.overrides), "finetune run config")


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
    try:
        return _run(cfg, Path(cfg.output).expanduser(), dist, resume, say, prepare_only)
    finally:
        teardown(dist)


def _run(cfg: FinetuneConfig, out: Path, dist, resume: bool, say: Callable[[str], None], prepare_only: bool = False) -> FinetuneResult:
    from replaytune.data import chat
    from replaytune.forgetting import format_report

    if (out / SUMMARY).is_file():
        if not resume:
            raise ReplaytuneError(f"{out}: holds a finished fine-tune ({SUMMARY}); choose another --output")
        report = json.loads((out / "forgetting.json").read_text())
        say(format_report(report))
        return FinetuneResult(out, json.loads((out / SUMMARY).read_text()), report)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).exists())):
        raise ReplaytuneError(f"{out}: exists and is not a replaytune finetune output; choose another --output")

    # Cheap checks first: nothing is written until they pass.
    cfg = one_candidate(cfg, say)
    check_extras(cfg)
    check_model(cfg)
    tok = load_tokenizer(cfg)
    check_vocab_early(cfg, tok)
    sources = resolve_sources(cfg)
    template = None
    if any(s.kind == "chat" for s in sources.values()):
        template = chat.resolve_template(tok, chat.load_template(cfg.chat_template), str(getattr(tok, "name_or_path", cfg.model)))
    epochs = cfg.epochs if cfg.epochs is not None else max(DEFAULT_EPOCHS[s.kind] for s in sources.values() if s.role == TARGET)

    created = not out.exists()
    started = False
    search = None
    try:
        prepared: dict[str, tuple[TokenStore, dict[str, Any]]] = {}
        tasks = None
        if dist.is_main:
            try:
                tasks = _eval_tasks(cfg)  # an unknown task fails before anything is written
                out.mkdir(parents=True, exist_ok=True)
                (out / MARKER).touch()
                prepared = prepare_sources(cfg, tok, out, sources, log=say)
                _save_tokenizer(tok, template if cfg.chat_template else None, out / "tokenizer")
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
            search = _search(cfg, stores, paths, out, epochs, say)
            chosen = search.chosen.candidate
            cfg = cfg.model_copy(update={"replay_fraction": chosen.rho, "lr": chosen.lr if chosen.lr is not None else cfg.lr})
            run_dir = fsearch.run_dir(out, chosen)
        plan = plan_for(cfg, stores, replay_fraction=cfg.rho, epochs=epochs)
        run_cfg = build_run_config(cfg, plan, paths, run_dir, out / "tokenizer")
        realised = _realised(run_cfg, stores, plan)
        if dist.is_main:
            say(_describe(plan, realised))
        if prepare_only:
            return FinetuneResult(out, {"plan": {**plan.to_dict(), "realised": realised}})
        resume_run = (resume or search is not None) and rundir.is_started(run_dir)  # the search finished the chosen run
        trainer = FinetuneTrainer(run_cfg, resume=resume_run, activation_checkpointing=cfg.activation_checkpointing)
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
        outputs = _finalize_model(cfg, run_cfg, trainer, out)
        trainer = None  # the trained model's memory is free for the downstream evaluation
        if not cfg.keep_checkpoints:
            for ck_dir in [run_dir, *((out / fsearch.SEARCH_DIR).glob("*") if search is not None else [])]:
                shutil.rmtree(Path(ck_dir) / rundir.CHECKPOINTS, ignore_errors=True)
        result.report = _report(cfg, run_cfg, stores, plan, record, out, say, tasks)
        result.summary = {
            "settings": cfg.model_dump(mode="json"),
            "epochs": epochs,
            "plan": {**plan.to_dict(), "realised": realised},
            "data": {role: {"source": sources[role].arg.path, "kind": sources[role].kind, "store": str(paths[role]),
                            "stats": _short_stats(prepared[role][1])} for role in sources},
            "run": {k: record.get(k) for k in ("steps", "tokens", "epochs", "wall_time_s", "tokens_per_s")},
            "final_eval": record.get("final", {}).get("eval"),
            "outputs": outputs,
            "seconds": round(train_s, 3),
        }
        if search is not None:
            result.summary["search"] = fsearch.write_outputs(out, search)
            say(f"replay fraction search: chose rho {chosen.rho:g}"
                + ("" if chosen.lr is None else f", LR {chosen.lr:g}")
                + f" ({search.steps_computed:,} of {search.steps_grid:,} grid steps); see {out / fsearch.MD}")
        for folder in ("model", "adapter"):
            if (out / folder).is_dir():
                write_text(out / folder / "README.md", model_card(result.summary, result.report, folder))
        atomic_write_json(out / SUMMARY, result.summary)  # last: marks the fine-tune finished
        say(f"outputs in {out}: " + ", ".join(f"{k} {v}" for k, v in outputs.items()))
    dist.barrier()
    return result


def model_card(summary: dict[str, Any], report: dict[str, Any], folder: str) -> str:
    """README.md for the saved model (or adapter): base model, data, replay settings, forgetting."""
    from replaytune.forgetting import format_report

    s, plan = summary["settings"], summary["plan"]
    data = summary["data"]
    lines = [
        "---",
        f"base_model: {s['model']}",
        "library_name: " + ("peft" if folder == "adapter" else "transformers"),
        "tags: [replaytune, replay, fine-tuning]",
        "---",
        "",
        f"# {s['name']}: {s['model']} fine-tuned with replay",
        "",
        "Fine-tuned with `replaytune finetune`: generic data replayed inside every batch "
        "(Kotha & Liang 2026, arXiv 2603.04964).",
        "",
        "## Data",
        "",
        "| role | source | kind | train tokens | held-out tokens |",
        "|---|---|---|---|---|",
    ]
    for role, d in data.items():
        tokens = (d.get("stats") or {}).get("tokens") or {}
        lines.append(f"| {label(role)} | {d['source']} | {d['kind']} | {tokens.get('train', '-')} | {tokens.get('val', '-')} |")
    lines += [
        "",
        "## Replay and training",
        "",
        f"- replay fraction {plan['replay_fraction']:g} of the batch's {plan['replay_unit']} "
        f"(realised {plan['realised']['replay_share']:.4f}); sequence weights "
        + ", ".join(f"{label(k)} {v:.4f}" for k, v in plan["weights"].items()),
        f"- {plan['steps']} steps of {plan['batch_size']} sequences x {plan['seq_len']} tokens; target seen "
        f"{plan['realised']['target_epochs']:.3g} times",
        f"- peak LR {s['lr'] if s['lr'] is not None else 'default'} ({s['lr_schedule']}, warmup {s['warmup']:g}), "
        f"weight decay {s['weight_decay']:g}, " + ("LoRA" if s.get("lora") else "full fine-tuning")
        + f", seed {s['seed']}",
        "",
        "## Held-out loss, base vs fine-tuned",
        "",
        format_report(report).split("\n", 1)[-1].strip(),  # the forgetting report without its title
        "",
        "## Use",
        "",
        "```python",
    ]
    if folder == "adapter":
        lines += ["from peft import AutoPeftModelForCausalLM", 'model = AutoPeftModelForCausalLM.from_pretrained("PATH")']
    else:
        lines += ["from transformers import AutoModelForCausalLM, AutoTokenizer",
                  'model = AutoModelForCausalLM.from_pretrained("PATH")',
                  'tokenizer = AutoTokenizer.from_pretrained("PATH")']
    lines += ["```", ""]
    return "\n".join(lines)


def _search(cfg: FinetuneConfig, stores, paths, out: Path, epochs: float, say: Callable[[str], None]):
    """Run the replay-fraction search (replaytune.search) with each candidate in OUT/search/<key>."""
    from replaytune.forgetting import side_loss
    from replaytune.search import Outcome, rung_step, successive_halving
    from replaytune.train.metrics import read_metrics

    cands = fsearch.candidates(cfg, stores, epochs)
    by_key = {c.key: (c_cfg, plan) for c, c_cfg, plan in cands}

    def run_to(c, step: int) -> Outcome:
        c_cfg, plan = by_key[c.key]
        where = fsearch.run_dir(out, c)
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
        step0 = next(m["eval"] for m in read_metrics(fsearch.run_dir(out, first)) if m["kind"] == "eval" and m["step"] == 0)
        base_generic = side_loss(step0, cands[0][2].side_parts(GENERIC))
    say("replay fraction search: " + ", ".join(f"{c.key} ({c.steps} steps)" for c, _, _ in cands))
    return successive_halving([c for c, _, _ in cands], run_to, fractions=fractions,
                              margin=cfg.search_margin,
                              base_generic=base_generic, max_forgetting=cfg.max_forgetting, log=say)


def _save_tokenizer(tok, template: str | None, path: Path) -> None:
    """A copy of the tokenizer saved beside the model (with the chat template trained with)."""
    tmp = temp_dir(path)
    try:
        old_template = getattr(tok, "chat_template", None)
        if template:
            tok.chat_template = template
        try:
            tok.save_pretrained(str(tmp))
        finally:
            if template:
                tok.chat_template = old_template
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _realised(run_cfg: rconfig.RunConfig, stores: dict[str, TokenStore], plan: ReplayPlan) -> dict[str, Any]:
    """What the run's exact mixture draws: loss tokens (or the unit) per source, target epochs."""
    from replaytune.train.plan import RunPlan

    mixture = RunPlan(run_cfg, stores).phases[0].mixture
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


def _short_stats(stats: dict[str, Any]) -> dict[str, Any]:
    keep = ("docs", "tokens", "loss_tokens", "truncated", "skipped_invalid", "dropped_trailing_user", "replaced_bytes",
            "empty_docs", "invalid_examples", "up_to_date", "given_store", "seconds", "tokens_per_s")
    return {k: stats[k] for k in keep if k in stats}


def _finalize_model(cfg: FinetuneConfig, run_cfg: rconfig.RunConfig, trainer: FinetuneTrainer, out: Path) -> dict[str, str]:
    """run/model -> model/ (full fine-tuning) or adapter/ (+ merged model/ unless save=adapter)."""
    from replaytune.model import load_tokenizer as tokenizer_for_save
    from replaytune.model import save_model

    saved = Path(run_cfg.out_dir) / rundir.MODEL
    if cfg.lora is None:
        if saved.exists():
            replace_dir(saved, out / "model")
        _use_cache(out / "model")
        return {"model": str(out / "model")}
    if saved.exists():
        replace_dir(saved, out / "adapter")
    outputs = {"adapter": str(out / "adapter")}
    if cfg.save == "adapter":
        return outputs
    if not (out / "model" / "config.json").is_file():
        model = getattr(trainer, "model", None)
        from replaytune.model import is_quantized

        if (model is None or getattr(trainer, "sharded", False) or not hasattr(model, "merge_and_unload")
                or is_quantized(model)):  # a 4-bit base would round the merged weights to 4 bits: merge into bf16
            model = _load_with_adapter(run_cfg, out / "adapter")
        merged = model.merge_and_unload()  # W + (alpha / r) B A, in place
        save_model(merged, out / "model", tokenizer=tokenizer_for_save(str(out / "tokenizer")))
        _use_cache(out / "model")
    outputs["model"] = str(out / "model")
    return outputs


def _load_with_adapter(run_cfg: rconfig.RunConfig, adapter: Path):
    from peft import PeftModel

    from replaytune.model import load_pretrained

    spec, dtype = _plain_base(run_cfg)
    return PeftModel.from_pretrained(load_pretrained(spec, dtype=dtype), str(adapter))


def _plain_base(run_cfg: rconfig.RunConfig) -> tuple[Any, str]:
    """(model spec, dtype) of the base model without adapters, unquantized (bf16 if it trained in 4 bits)."""
    spec = run_cfg.model
    dtype = "bf16" if spec.load_in_4bit or spec.weights_dtype == "bf16" else "fp32"
    return spec.model_copy(update={"lora": None, "load_in_4bit": False}), dtype


def _use_cache(model_dir: Path) -> None:
    """Training switched the KV cache off; the saved model is for inference, so switch it back on."""
    path = model_dir / "config.json"
    if path.is_file():
        data = json.loads(path.read_text())
        if data.get("use_cache") is False:
            data["use_cache"] = True
            atomic_write_json(path, data)


def _eval_tasks(cfg: FinetuneConfig):
    """lm-evaluation-harness's task manager for ``eval_tasks``, their data loaded (None: no tasks, or no harness)."""
    if not cfg.eval_tasks:
        return None
    from replaytune.forgetting import task_manager

    return task_manager(cfg.eval_tasks, cfg.eval_include, load_data=True)


def _report(cfg, run_cfg, stores, plan, record, out: Path, say, tasks=None) -> dict[str, Any]:
    from replaytune.forgetting import build_report, downstream, format_report, held_out, write_report

    paths = {name: arg.path for name, (_, arg) in source_names(cfg).items()}
    sources = {name: {"source": paths[name], **held_out(store, cfg.seq_len, cfg.eval_sequences)}
               for name, store in stores.items()}
    report = build_report(Path(run_cfg.out_dir), plan=plan.to_dict(), held=sources)
    if cfg.eval_tasks:
        report["downstream"] = downstream(
            cfg.eval_tasks,
            base=lambda: _eval_model(run_cfg, None),
            tuned=lambda: _eval_model(run_cfg, out),
            limit=cfg.eval_limit,
            include=cfg.eval_include,
            manager=tasks,
        )
    write_report(out, report)
    say(format_report(report))
    return report


def _eval_model(run_cfg: rconfig.RunConfig, out: Path | None):
    """(model, tokenizer) for lm-evaluation-harness: the base model, or the fine-tuned one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from replaytune.model import load_pretrained

    tok = AutoTokenizer.from_pretrained(str(Path(run_cfg.model.tokenizer)))
    if out is None:
        spec, dtype = _plain_base(run_cfg)
        model = load_pretrained(spec, dtype=dtype)
    elif (out / "model" / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(str(out / "model"))
    else:
        model = _load_with_adapter(run_cfg, out / "adapter").merge_and_unload()
    return _on_run_device(model, run_cfg), tok


def _on_run_device(model, run_cfg: rconfig.RunConfig):
    """The model on the device training used (the harness runs it where it is), in bf16 where training was."""
    import torch

    from replaytune.train.distributed import resolve_device, resolve_precision

    device = resolve_device(run_cfg.device)
    if resolve_precision(run_cfg.dtype, device) == "bf16":
        model = model.to(torch.bfloat16)
    return model.to(device).eval()
