"""``replaytune demo``: the paper's controlled study at CPU scale, on text already on this machine.

What it does, all offline:

1. finds real text: English man pages (generic, the "pre-training" domain) and Basque UI
   strings from the translation catalogs (the target, a language the generic data lacks;
   Python standard-library source where there are none), or the files you give;
2. trains one byte-level BPE tokenizer on a sample of all of them and prepares token stores,
   holding out 5 % of the generic documents and 30 % of the target's (512 held-out sequences
   of each are evaluated: the first half validates every choice, the second half is the test
   set every reported number comes from);
3. runs the study (:mod:`replaytune.study.runs`) on the first target with 4 seeds (disjoint random
   draws of unique target data, each shared by every arm and reference point of its seed):
   fine-tuning with and without replay at fixed total steps, each at 2 LRs; mid-training over
   rho on the paper's LR window, its peak LR tuned on the rho = 0 baseline first; and each
   setting's baseline repeated at 0.5 and 2 batches of unique data (the reference curves).
   A further ``--target`` gets the fine-tuning comparison (its pre-training is shared with the
   first: the prefix planner sees identical generic-only steps);
4. writes results.json (paired multipliers, the mid-training geometry, a fingerprint of the
   data), report.md and plots (a second target under ``DIR/<name>/``).

Sizes were chosen by measurement on a 2-core CPU (see BENCHMARKS.md): Llama ``tiny``
(hidden 128, 4 layers) with a 2048-token BPE, sequences of 128 tokens, batches of 16; the
unique target data is one batch (16 sequences, 2,048 tokens), repeated for tens of epochs,
a small fraction of the run's tokens as in the paper. docs/demo-protocol.md states the
protocol and the prediction made before the first run on it.
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
        # Basque, or Python where there are no Basque catalogs: measured here, held-out Python
        # files barely improve from a few thousand tokens of other files (a fine-tuning multiplier
        # of 1.11x [0.92, 1.34] with 2 seeds), so the 15-minute budget goes to more seeds and LRs
        # on Basque; give `--target` twice for a second target (fine-tuning comparison only).
        eu = work / "basque.jsonl"
        try:
            if not eu.exists():
                lines.append("target basque: " + corpora.translations("eu", eu, max_bytes=TARGET_BYTES, flag="--target PATH").summary())
            else:
                lines.append(f"target basque: translation catalogs (cached at {eu})")
            tpaths["basque"] = eu
        except DataError as exc:
            lines.append(f"target basque: not found ({exc}); the full study runs on Python")
        if not tpaths:
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
        # held out: 5 % of the generic documents, TARGET_VAL_FRACTION of a target's
        frac = 0.05 if spec.name == "generic" else TARGET_VAL_FRACTION
        store, stats = prepare(spec, tok, work / "stores" / spec.name, val_fraction=frac, progress=True)
        stores[spec.name] = store.path
        _say(f"store {spec.name}: {store.train.num_tokens:,} train / {store.val.num_tokens:,} held-out tokens "
             f"({store.val.num_sequences(128):,} held-out sequences of 128)")
    return DemoData(tok_dir, stores.pop("generic"), stores, found)


def demo_study(data: DemoData, target: str, *, full: bool, quick: bool = False,
               micro_batch_size: int | None = None) -> "Any":
    """The study config of one target (the full study, or fine-tuning only).

    Both use the ``baseline`` reference family: at this scale the paper's uniform references
    are flat (data spread through a 512-step run is mostly forgotten: Basque x = 0.5..4 gave
    5.59, 5.36, 5.57, 5.52), while each setting's own baseline repeated at more target data
    falls, so the multiplier reads "replay is worth k times more target data under the same
    recipe" (README, "Data efficiency").
    """
    from replaytune.study.runs import StudyConfig

    seeds = [0, 1] if quick else DEMO_SEEDS
    spec: dict[str, Any] = {
        "name": target,
        "target_store": str(data.targets[target]),
        "generic_store": str(data.generic),
        "target_name": target,
        "generic_name": "generic",
        "model": {"preset": "tiny", "tokenizer": str(data.tokenizer)},
        "seq_len": 128,
        "batch_size": 16,
        "micro_batch_size": micro_batch_size,
        "steps": 96 if quick else DEMO_STEPS,
        "target_batches": 1,
        "seeds": seeds,
        "pretrain": {"lr": 3e-3, "schedule": "wsd", "warmup": 0.01, "decay": 0.1},
        "draw": 0,
        "finetune": {"epochs": 8 if quick else FT_EPOCHS, "replay": FT_REPLAY, "lrs": FT_LRS},
        # alpha = 1 runs (they share Stage 1), every seed; the peak LR is tuned on the baseline only
        "midtrain": {"epochs": 4 if quick else MT_EPOCHS, "replay": MT_REPLAY, "alpha": [1.0],
                     "lr": MT_LRS[0], "lrs": MT_LRS, "decay": MT_COOLDOWN, "seeds": seeds},
        "reference": {"target_batches": REF_X, "family": "baseline", "seeds": seeds, "level": 0.9},
        "eval": {"interval": 0, "sequences": EVAL_SEQUENCES, "batch_size": 64, "split": True,
                 "at_stage_switch": False},
        "switch_evals": SWITCH_EVALS,
        "curve_evals": CURVE_EVALS,
    }
    if not full:
        # A second target: the fine-tuning comparison only, with its own fine-tuning reference
        # curve; its pre-training is shared with the first target's runs (the prefix planner
        # sees the identical generic-only steps), so it costs only its fine-tuning steps.
        spec["midtrain"] = None
    return StudyConfig.model_validate(spec)


# Chosen by measurement (BENCHMARKS.md, "demo sizing"), within 15 minutes on 2 cores.
DEMO_STEPS = 256
DEMO_SEEDS = [0, 1, 2, 3]  # 4 disjoint draws of unique target data, shared by every arm and reference point
# Fine-tuning: 16 passes over the one batch of unique target data, so the no-replay baseline
# fine-tunes for 1/16 of the run, as the paper's 64 epochs in 1024 steps.
FT_EPOCHS = 16
FT_REPLAY = [0.0, 0.75]  # the earlier demo's best rho (4.909 vs 4.961 at 0.5); one arm: no best-of-k
# Every fine-tuning arm and reference point runs both; the choice is made on validation losses.
# Measured at these sizes: 1e-3 beat 3e-4 on every arm and reference point by 0.2-0.7 nats, at
# the top of that grid, so the grid brackets 1e-3 from above.
FT_LRS = [1e-3, 3e-3]
# Mid-training on the paper's geometry: the paper puts 32 target steps (gamma = 1/32) in a
# 1024-step WSD run with a 10 % cooldown (102 steps). 8 target steps (8 epochs of 1 batch)
# in 256 steps with a 10 % cooldown (26 steps) is the same geometry at a quarter of the length:
# every rho's Stage 2 starts at the same point of the cooldown as the paper's;
# `midtrain_geometry` in results.json lists it beside the paper's.
MT_EPOCHS = 8
MT_COOLDOWN = 0.1
MT_REPLAY = [0.0, 0.25, 0.5, 0.75, 0.875]
MT_LRS = [3e-3, 1e-3]  # tried on the rho = 0 baseline only; every rho runs at the winner
REF_X = [0.5, 2]  # unique target batches of the reference points beside the baselines' own x = 1
# Held-out sequences per source: 512, or all a source has; the first half (validation) makes
# every choice, the second half (test) gives every reported number.
EVAL_SEQUENCES = 512
# Held-out share of each target's documents (generic: 5 %): the Basque catalogs are small, and
# 5 % of them held out only ~60 sequences.
TARGET_VAL_FRACTION = 0.3
# No evaluations beyond each run's phase ends: the headline needs the final losses only, and one
# evaluation of 2 x 512 held-out sequences costs about 24 training steps (BENCHMARKS.md). A study
# config can ask for the first seed's curves (`curve_evals`) and the loss around the switch
# (`switch_evals`).
SWITCH_EVALS: list[int] = []
CURVE_EVALS = 0


def run_demo(out: str | Path, *, generic: str | None = None, targets: list[str] | None = None, quick: bool = False,
             workers: int = 2, threads: int = 1, micro_batch_size: int | None = None) -> dict[str, Any]:
    from replaytune.study import report, sweep
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
        plans.append((demo_study(data, name, full=(i == 0), quick=quick, micro_batch_size=micro_batch_size), where))
        _say(f"target '{name}': {'full study' if i == 0 else 'fine-tuning comparison'} -> {where}")
    t1 = time.time()
    all_results = study.run_studies(plans, out / "runs", executor=sweep.ProcessExecutor(workers, threads))
    t2 = time.time()
    for (cfg, where), results in zip(plans, all_results):
        report.build_report(where)
        summary["targets"][cfg.target_name] = {"dir": str(where), "multipliers": results["multipliers"],
                                               "data_fingerprint": results["meta"]["data_fingerprint"]}
    summary["wall_time_s"] = time.time() - t0
    summary["timing_s"] = {"data": t1 - t0, "runs": t2 - t1, "report": time.time() - t2}
    summary["workers"], summary["threads"], summary["micro_batch_size"] = workers, threads, micro_batch_size
    summary["primary"] = primary
    (out / "demo.json").write_text(json.dumps(summary, indent=2))
    return summary


FAMILY = ("k times more unique target data for the no-replay recipe at fixed epochs: not the paper's "
          "uniform-mix currency")


def _iv(iv: list | None) -> str:
    return "" if not iv else " [" + ", ".join("inf" if v is None else f"{v:.2f}" for v in iv) + "]"


def headline(results: dict[str, Any]) -> list[str]:
    """A few printable lines: the data fingerprint, target and generic loss per setting with seed
    noise, the mid-training geometry beside the paper's, and every arm's multiplier."""
    from replaytune.study import efficiency as eff

    lines = []
    meta = results.get("meta") or {}
    if meta.get("data_fingerprint"):
        lines.append(f"data fingerprint {meta['data_fingerprint']} (training and held-out tokens of the target and "
                     f"generic stores; equal fingerprints: the same data)")
    groups = eff.group_runs(r for r in results["runs"] if not r.get("reference"))  # the method runs, not references
    noise = results.get("noise", {})
    held = "test half of the held-out set; LRs chosen on the validation half" if meta.get("held_out", "").startswith(
        "test") else "held-out set"
    for setting in ("finetune", "midtrain"):
        rows = [g for g in groups if g["setting"] == setting]
        if not rows:
            continue
        best = eff.best_per(rows, lambda g: (g["rho"], g["alpha"]))  # best LR per configuration (validation)
        rows = [best[k] for k in sorted(best)]
        sd = (noise.get(setting) or {}).get("target")
        n = max(len(g["seeds"]) for g in rows)
        sd_txt = f"seed-to-seed std {sd:.3f}" if sd is not None else "one seed: noise not measured"
        lines.append(f"{setting} ({n} seeds, {sd_txt}; {held}):")
        if setting == "midtrain" and meta.get("midtrain_lr"):
            ch = meta["midtrain_lr"]
            tried = ", ".join(f"{lr} -> {v:.3f}" for lr, v in ch["mean_loss"].items())
            lines.append(f"  peak LR tuned on rho=0 only ({ch['on']} loss: {tried}); every rho at {ch['chosen']:g}")
        for g in rows:
            extra = f", alpha={g['alpha']:g}" if setting == "midtrain" else ""
            gl = "-" if g["generic_loss"] is None else f"{g['generic_loss']:.3f}"
            lines.append(f"  rho={g['rho']:<5g}{extra:11s} lr={g['lr']:<7g} target {g['target_loss']:.3f}  generic {gl}")
    geo, paper = results.get("midtrain_geometry"), results.get("midtrain_geometry_paper")
    if geo:
        lines.append("mid-training geometry (this run | the paper, 1024 steps, 32 target steps, 10% cooldown): "
                     "switch step, LR at switch / peak, share of Stage 2 at peak LR, LR-weighted target dose")
        by_rho = {r["rho"]: r for r in paper or []}
        for r in geo:
            p = by_rho.get(r["rho"])
            ptxt = "" if p is None else (f"  |  {p['switch_step']:4d}  {p['lr_at_switch']:.2f}  {p['stage2_at_peak']:.2f}  "
                                         f"{p['target_dose']:5.1f}")
            lines.append(f"  rho={r['rho']:<5g} {r['switch_step']:4d}  {r['lr_at_switch']:.2f}  {r['stage2_at_peak']:.2f}  "
                         f"{r['target_dose']:5.1f}{ptxt}")
    effi = results.get("efficiency") or {}
    if "comparisons" not in effi:
        lines.append(f"target-data multipliers: none ({effi.get('error', 'no comparison could be made')})")
        return lines
    comps = effi.get("comparisons") or {}
    first = next((c for c in comps.values() if c and c.get("interval_method")), None)
    level = effi.get("level")
    pct = f"{round(100 * level)}% " if isinstance(level, float) else ""
    how = (f"{pct}{first['interval_method']}, {first['seeds']} seeds" + (", paired" if first.get("paired") else "")
           if first else f"{pct}interval")
    lines.append(f"target-data multipliers (reference family '{effi.get('reference', 'uniform')}': {FAMILY if effi.get('reference') == 'baseline' else 'the paper definition'}; {how}):")
    for key, text in (("finetune_replay", "fine-tuning replay"), ("midtrain_replay", "mid-training replay"),
                      ("full_schedule", "full schedule")):
        c = comps.get(key)
        if c is None:
            continue  # the runs for it were not part of this study
        if c.get("multiplier") is None and c.get("lower_bound"):
            hi = (c.get("x_range") or (None, None))[1]
            lines.append(f"  {text:20s} > {c['lower_bound']:.1f}x, beyond the measured range: {c['method']} has target "
                         f"{c['method_loss']:.3f}, below the no-replay recipe's mean at its largest x = {hi:g} batches, "
                         f"in {c.get('seeds_past_range')} of {c.get('seeds')} seeds (no finite multiplier from the fit)")
        elif c.get("multiplier") is None:
            why = c.get("error") or ("the method's loss is at or below the curve's asymptote C: no finite effective data"
                                     if c.get("method_x") is None else "the baseline has no finite effective data")
            lines.append(f"  {text:20s} none - {why}")
            continue
        else:
            br = c.get("bracket_multiplier")
            br_txt = f"; between the measured points {br:.2f}x" if br is not None else ""
            fit = c.get("fit")
            slope = c.get("slope_per_doubling")
            fit_txt = (f"{fit} fit" if fit else "fit") + (f", {slope:.3f} nats per doubling" if slope is not None else "")
            k = c.get("best_of") or c.get("candidates")
            lines.append(f"  {text:20s} {c['multiplier']:.2f}x{_iv(c.get('interval'))}{br_txt}  ({c['method']} vs "
                         f"{c['baseline']}: best of {k} arms, chosen on {c.get('chosen_on') or 'the reported losses'}; "
                         f"{fit_txt})")
            if c.get("interpolated") is False:
                lo, hi = c.get("x_range") or (None, None)
                lines.append(f"  {'':20s} effective data outside the measured range x = {lo:g}..{hi:g} batches: "
                             "extrapolated" if lo is not None
                             else f"  {'':20s} effective data outside the measured range: extrapolated")
        for name, a in (c.get("arms") or {}).items():  # every arm: its multiplier, its lower bound, or none
            m, lb = a.get("multiplier"), a.get("lower_bound")
            value = f"{m:.2f}x" if m is not None else f"> {lb:.1f}x" if lb else "none"
            lines.append(f"  {'':20s} {name:22s} {value}{_iv(a.get('interval'))}  target {a['loss']:.3f}")
    return lines
