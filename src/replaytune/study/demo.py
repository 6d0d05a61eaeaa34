"""``replaytune demo``: the paper's controlled study at CPU scale, on text already on this machine.

What it does, all offline:

1. finds real text: English man pages (generic, the "pre-training" domain), Python
   standard-library source (a target far from man-page prose in form) and Basque UI strings
   from the translation catalogs (a target in another language), or the files you give;
2. trains one byte-level BPE tokenizer on a sample of all of them and prepares token stores;
3. runs the study (:mod:`replaytune.study.runs`) on the first target: fine-tuning with and without
   replay at fixed total steps with a small LR grid and several fine-tuning seeds,
   mid-training over rho x alpha, and uniform reference runs for the efficiency fit; the
   second target gets the fine-tuning comparison (its pre-training is shared with the first:
   the prefix planner sees identical generic-only steps);
4. writes results.json, report.md and plots (the second target under ``DIR/<name>/``).

Sizes were chosen by measurement on a 2-core CPU (see BENCHMARKS.md): Llama ``tiny``
(hidden 128, 4 layers) with a 2048-token BPE, sequences of 128 tokens, batches of 16; the
unique target data is one batch (16 sequences, 2,048 tokens), repeated for tens of epochs,
a small fraction of the run's tokens as in the paper.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from replaytune.errors import DataError

# Byte budgets of the corpora written for the demo (UTF-8 bytes of document text).
GENERIC_BYTES = 6_000_000  # ~1.8M tokens: more than the pre-training consumes, so no generic epoch repeats
TARGET_BYTES = 2_000_000
TOKENIZER_BYTES = 3_000_000
VOCAB = 2048


@dataclass
class DemoData:
    tokenizer: Path
    generic: Path  # store
    targets: dict[str, Path]  # name -> store
    found: list[str] = field(default_factory=list)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def find_corpora(work: Path, generic: str | None, targets: list[str] | None) -> tuple[Path, dict[str, Path], list[str]]:
    """Write (or reuse) the demo corpora; user files replace the defaults."""
    from replaytune.data import corpora

    work.mkdir(parents=True, exist_ok=True)
    lines = []
    if generic:
        gpath = Path(generic)
        if not gpath.exists():
            raise DataError(f"--generic {generic}: no such file or directory")
        lines.append(f"generic: your files at {gpath}")
    else:
        gpath = work / "generic-manpages.jsonl"
        if not gpath.exists():
            info = corpora.generic_text(gpath, max_bytes=GENERIC_BYTES, flag="--generic PATH")
            lines.append("generic: " + info.summary())
        else:
            lines.append(f"generic: man pages (cached at {gpath})")
    tpaths: dict[str, Path] = {}
    if targets:
        for t in targets:
            p = Path(t)
            if not p.exists():
                raise DataError(f"--target {t}: no such file or directory")
            tpaths[p.stem.split(".")[0]] = p
            lines.append(f"target {p.stem}: your files at {p}")
    else:
        # Basque first (the full study), Python second (the fine-tuning comparison): measured
        # here, held-out Python files barely improve from a few thousand tokens of other files
        # (the reference runs got worse with more target data), so Python cannot carry the
        # efficiency fit at this scale; Basque can (README, "Results of the demo").
        eu = work / "basque.jsonl"
        try:
            if not eu.exists():
                lines.append("target basque: " + corpora.translations("eu", eu, max_bytes=TARGET_BYTES, flag="--target PATH").summary())
            else:
                lines.append(f"target basque: translation catalogs (cached at {eu})")
            tpaths["basque"] = eu
        except DataError as exc:
            lines.append(f"target basque: not found ({exc}); the full study runs on Python")
        py = work / "python.jsonl"
        if not py.exists():
            lines.append("target python: " + corpora.python_stdlib(py, max_bytes=TARGET_BYTES, flag="--target PATH").summary())
        else:
            lines.append(f"target python: standard library (cached at {py})")
        tpaths["python"] = py
    return gpath, tpaths, lines


def prepare_data(out: Path, generic: str | None = None, targets: list[str] | None = None) -> DemoData:
    from replaytune.data.prepare import prepare
    from replaytune.data.sources import SourceSpec
    from replaytune.data.tokenizer import load_tokenizer, train_tokenizer

    work = out / "data"
    gpath, tpaths, found = find_corpora(work / "corpora", generic, targets)
    for line in found:
        _say(line)
    tok_dir = work / "tokenizer"
    specs = [SourceSpec(str(gpath), name="generic")] + [SourceSpec(str(p), name=n) for n, p in tpaths.items()]
    if not (tok_dir / "tokenizer.json").exists():
        _say(f"training a {VOCAB}-token byte-level BPE on {len(specs)} corpora")
        train_tokenizer(specs, VOCAB, tok_dir, max_bytes=TOKENIZER_BYTES)
    tok = load_tokenizer(tok_dir)
    stores = {}
    for spec in specs:
        # 5 % of documents held out: the validation sequences of every source
        store, stats = prepare(spec, tok, work / "stores" / spec.name, val_fraction=0.05, progress=True)
        stores[spec.name] = store.path
        _say(f"store {spec.name}: {store.train.num_tokens:,} train / {store.val.num_tokens:,} held-out tokens")
    return DemoData(tok_dir, stores.pop("generic"), stores, found)


def demo_study(data: DemoData, target: str, *, full: bool, quick: bool = False) -> "Any":
    """The study config of one target (the full study, or fine-tuning only).

    Both use the ``baseline`` reference family: at this scale the paper's uniform references
    are flat (data spread through a 512-step run is mostly forgotten: Basque x = 0.5..4 gave
    5.59, 5.36, 5.57, 5.52), while each setting's own baseline repeated at more target data
    falls, so the multiplier reads "replay is worth k times more target data under the same
    recipe" (README, "Data efficiency").
    """
    from replaytune.study.runs import StudyConfig

    seeds = [0] if quick else DEMO_SEEDS
    spec: dict[str, Any] = {
        "name": target,
        "target_store": str(data.targets[target]),
        "generic_store": str(data.generic),
        "target_name": target,
        "generic_name": "generic",
        "model": {"preset": "tiny", "tokenizer": str(data.tokenizer)},
        "seq_len": 128,
        "batch_size": 16,
        "steps": 96 if quick else DEMO_STEPS,
        "target_batches": 1,
        "seeds": seeds,
        "pretrain": {"lr": 3e-3, "schedule": "wsd", "warmup": 0.01, "decay": 0.1},
        "finetune": {"epochs": 8 if quick else FT_EPOCHS, "replay": [0.0, 0.5, 0.75],
                     "lrs": [FT_LR.get(target, FT_LR_DEFAULT)]},
        # alpha = 1 runs (they share Stage 1) with two seeds
        "midtrain": {"epochs": 8 if quick else MT_EPOCHS, "replay": [0.0, 0.25, 0.5, 0.75], "alpha": [1.0],
                     "lr": 3e-3, "seeds": seeds[:2]},
        "reference": {"target_batches": REF_X, "family": "baseline", "seeds": seeds[:2], "level": 0.9},
        "eval": {"interval": 0, "sequences": 64, "batch_size": 64},
        "switch_evals": SWITCH_EVALS,
    }
    if not full:
        # The second target: the fine-tuning comparison with its own fine-tuning reference curve;
        # its pre-training is shared with the first target's runs (the prefix planner sees the
        # identical generic-only steps), so it costs only its fine-tuning steps.
        spec["midtrain"] = None
        spec["seeds"] = seeds[:2]
    return StudyConfig.model_validate(spec)


# Chosen by measurement (BENCHMARKS.md, "demo sizing").
DEMO_STEPS = 512
DEMO_SEEDS = [0, 1, 2]
FT_EPOCHS = 32
MT_EPOCHS = 32
REF_X = [0.5, 1, 2, 4]  # unique target batches of the reference curves (the method runs use 1)
# One fine-tuning LR per target, the best of {1e-4, 3e-4} in the earlier demo's grid (README,
# "Results of the demo"): a grid doubles every fine-tuning run and reference point.
FT_LR = {"basque": 3e-4, "python": 1e-4}
FT_LR_DEFAULT = 3e-4
# Held-out evaluations around the switch to target data (first seed): the loss spike of the
# distribution shift, 8 evaluations of 128 sequences per run (BENCHMARKS.md, "demo").
SWITCH_EVALS = [-32, -16, -4, 4, 8, 16, 32, 64]


def run_demo(out: str | Path, *, generic: str | None = None, targets: list[str] | None = None, quick: bool = False,
             workers: int = 2) -> dict[str, Any]:
    from replaytune.study import report
    from replaytune.study import runs as study

    out = Path(out)
    t0 = time.time()
    data = prepare_data(out, generic, targets)
    names = list(data.targets)
    primary = names[0]
    summary: dict[str, Any] = {"found": data.found, "targets": {}}
    plans = []
    for i, name in enumerate(names):
        where = out if i == 0 else out / name
        plans.append((demo_study(data, name, full=(i == 0), quick=quick), where))
        _say(f"target '{name}': {'full study' if i == 0 else 'fine-tuning comparison'} -> {where}")
    all_results = study.run_studies(plans, out / "runs", workers=workers)
    for (cfg, where), results in zip(plans, all_results):
        report.build_report(where)
        summary["targets"][cfg.target_name] = {"dir": str(where), "multipliers": results["multipliers"]}
    summary["wall_time_s"] = time.time() - t0
    summary["primary"] = primary
    (out / "demo.json").write_text(json.dumps(summary, indent=2))
    return summary


def headline(results: dict[str, Any]) -> list[str]:
    """A few printable lines: target and generic loss per setting, with seed noise and multipliers."""
    from replaytune.study import efficiency as eff

    lines = []
    groups = eff.group_runs(r for r in results["runs"] if not r.get("reference"))  # the method runs, not references
    noise = results.get("noise", {})
    for setting in ("finetune", "midtrain"):
        rows = [g for g in groups if g["setting"] == setting]
        if not rows:
            continue
        if setting == "finetune":  # best LR per rho
            best = eff.best_per(rows, lambda g: g["rho"])
            rows = [best[r] for r in sorted(best)]
        sd = (noise.get(setting) or {}).get("target")
        sd_txt = f" (seed-to-seed std {sd:.3f})" if sd is not None else " (one seed: noise not measured)"
        lines.append(f"{setting}{sd_txt}:")
        for g in rows:
            extra = f", alpha={g['alpha']:g}" if setting == "midtrain" else f", lr={g['lr']:g}"
            gl = "-" if g["generic_loss"] is None else f"{g['generic_loss']:.3f}"
            lines.append(f"  rho={g['rho']:<5g}{extra:14s} target {g['target_loss']:.3f}  generic {gl}")
    effi = results.get("efficiency") or {}
    if "comparisons" not in effi:
        lines.append(f"target-data multipliers: none ({effi.get('error', 'no comparison could be made')})")
        return lines
    level = effi.get("level")
    pct = f"{round(100 * level)}% " if isinstance(level, float) else ""
    lines.append(f"target-data multipliers (reference family '{effi.get('reference', 'uniform')}', "
                 f"{pct}bootstrap interval):")
    for key, text in (("finetune_replay", "fine-tuning replay"), ("midtrain_replay", "mid-training replay"),
                      ("full_schedule", "full schedule")):
        c = (effi.get("comparisons") or {}).get(key)
        if c is None:
            continue  # the runs for it were not part of this study
        if c.get("multiplier") is None:
            why = c.get("error") or ("the method's loss is at or below the curve's asymptote C: no finite effective data"
                                     if c.get("method_x") is None else "the baseline has no finite effective data")
            lines.append(f"  {text:20s} none - {why}")
            continue
        iv = c.get("interval")
        iv_txt = "" if not iv else " [" + ", ".join("inf" if v is None else f"{v:.2f}" for v in iv) + "]"
        lines.append(f"  {text:20s} {c['multiplier']:.2f}x{iv_txt}  ({c['method']} vs {c['baseline']}, "
                     f"curve '{c.get('reference')}')")
    return lines
