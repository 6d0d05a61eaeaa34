"""Plots and report.md from a results directory, reading saved records only.

Inputs (all under DIR): ``results.json`` (runs, multipliers, efficiency, noise, meta) and,
for curve plots, each run's ``run_dir`` with ``metrics.jsonl`` and ``record.json``.
Outputs: ``DIR/plots/*.png`` (matplotlib's Agg canvas, no pyplot state, dpi 120) and
``DIR/report.md``, each written to a temporary name and renamed into place.

Everything is recomputed from the records: the reference fit from the ``reference`` runs
(else from ``efficiency.reference`` points, else the saved ``efficiency.fit``), the paper's
three comparisons (:func:`replaytune.efficiency.compare_best`) and their
bootstrap intervals (1000 resamples, seed 0 by default), and seed-to-seed noise (from
``results.noise`` where given, else pooled from configurations run with several seeds).
A plot whose data is missing is skipped with a note in report.md; nothing here crashes on
an incomplete study. Rebuilding the same directory gives byte-identical files.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from replaytune import efficiency as eff
from replaytune.errors import DataError
from replaytune.fsio import write_bytes
from replaytune.plots import DPI, LABELS, PLOTS, SETTING_ORDER, Skip, _desc, _f, _mult_text


class Results:
    """results.json plus everything derived from it (groups, fit, comparisons, noise)."""

    def __init__(self, directory: Path, resamples: int, seed: int):
        self.dir = directory
        path = directory / "results.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"{path}: no such file; run `replaytune study` or `demo` with --out {directory}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: cannot read results ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
            raise DataError(f"{path}: expected an object with a 'runs' list")
        for i, r in enumerate(data["runs"]):
            if not isinstance(r, dict):
                raise DataError(f"{path}: runs[{i}] must be an object, got {r!r}")
            for k in ("rho", "alpha", "lr", "x", "target_loss", "generic_loss"):
                v = r.get(k)
                if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                    raise DataError(f"{path}: runs[{i}].{k} must be a number or null, got {v!r}")
        self.data = data
        self.runs = data["runs"]
        self.meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
        self.target = str(self.meta.get("target_source") or "target")
        self.generic = str(self.meta.get("generic_source") or "generic")
        self.groups = eff.group_runs(self.runs)
        self.notes: list[str] = []
        self.fit = self._fit()
        self.resamples, self.seed = resamples, seed
        if self.fit is not None:
            self.comparisons = eff.compare_best(self.fit, self.runs, resamples=resamples, seed=seed)
        else:
            self.comparisons = {
                k: (p and {**p, "multiplier": None, "interval": None, "method_x": None, "baseline_x": None, "bootstrap": None})
                for k, p in eff.best_runs(self.runs).items()
            }
        self._metrics: dict[str, list[dict[str, Any]]] = {}

    def _fit(self) -> eff.Fit | None:
        xs, losses = eff.reference_points(self.runs)
        saved_eff = self.data.get("efficiency") if isinstance(self.data.get("efficiency"), dict) else {}
        if not xs and isinstance(saved_eff.get("reference"), list):  # the `efficiency` input format
            pts = [p for p in saved_eff["reference"] if isinstance(p, dict) and p.get("x") is not None
                   and p.get("loss") is not None]
            xs, losses = [float(p["x"]) for p in pts], [float(p["loss"]) for p in pts]
        if xs:
            try:
                return eff.fit_reference(xs, losses)
            except eff.FitError as exc:
                self.notes.append(f"Reference fit from the reference runs failed: {exc}.")
        saved = saved_eff.get("fit")
        if isinstance(saved, dict):
            try:
                fit = eff.Fit.from_dict(saved)
                self.notes.append("Fit taken from results.json `efficiency.fit` (no reference runs to refit; no intervals).")
                return fit
            except eff.FitError as exc:
                self.notes.append(f"Saved efficiency fit unusable: {exc}.")
        return None

    def noise(self, setting: str, which: str = "target") -> float | None:
        """Seed-to-seed std of one run's final loss in ``setting`` (given, else pooled from seeds)."""
        given = (self.data.get("noise") or {}) if isinstance(self.data.get("noise"), dict) else {}
        v = given.get(setting)
        if isinstance(v, dict):
            v = v.get(which, v.get(f"{which}_loss"))
        elif which != "target":
            v = None  # a bare number per setting is the target-loss noise
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
        key = "target_losses" if which == "target" else "generic_losses"
        devs, dof = 0.0, 0
        for g in self.groups:
            vals = np.asarray(g[key], dtype=float)
            if g["setting"] == setting and vals.size > 1:
                devs += float(np.sum((vals - vals.mean()) ** 2))
                dof += vals.size - 1
        return math.sqrt(devs / dof) if dof else None

    def best_lr(self, setting: str) -> dict[tuple[float, float], dict[str, Any]]:
        """(rho, alpha) -> the group with the best LR (lowest mean target loss)."""
        out: dict[tuple[float, float], dict[str, Any]] = {}
        for g in self.groups:
            if g["setting"] == setting:
                k = (g["rho"], g["alpha"])
                if k not in out or g["target_loss"] < out[k]["target_loss"]:
                    out[k] = g
        return out

    # -- run records ---------------------------------------------------------------------------
    def metrics(self, group: dict[str, Any]) -> list[dict[str, Any]]:
        run = group["run"]
        rel = run.get("run_dir")
        if not rel:
            raise Skip(f"run '{run.get('name')}' has no run_dir in results.json")
        path = self.dir / rel / "metrics.jsonl"
        key = str(path)
        if key not in self._metrics:
            if not path.is_file():
                raise Skip(f"{path.relative_to(self.dir)} not found")
            rows = []
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise Skip(f"{path.relative_to(self.dir)}:{i}: not valid JSON ({exc.msg})") from None
                    if not isinstance(row, dict):
                        raise Skip(f"{path.relative_to(self.dir)}:{i}: expected a JSON object")
                    rows.append(row)
            self._metrics[key] = rows
        return self._metrics[key]

    def switch_step(self, group: dict[str, Any]) -> int | None:
        """Global step where target data starts in earnest: a two-stage switch or a new phase.

        From record.json phases (a schedule's ``switch_step`` is counted from its phase's
        ``start_step``), else the row's own ``switch_step`` in results.json, else the first
        change of ``phase`` in metrics.jsonl.
        """
        rel = group["run"].get("run_dir")
        path = self.dir / rel / "record.json" if rel else None
        if path is not None and path.is_file():
            try:
                phases = json.loads(path.read_text(encoding="utf-8")).get("phases") or []
                for ph in phases:
                    sw = (ph.get("schedule") or {}).get("switch_step")
                    if sw:
                        return int(ph.get("start_step", 0)) + int(sw)
                if len(phases) > 1:
                    return int(phases[-1].get("start_step", 0))
            except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
                self.notes.append(f"{path.relative_to(self.dir)}: unreadable phases; switch step found elsewhere.")
        if group["run"].get("switch_step"):
            return int(group["run"]["switch_step"])
        rows = [r for r in self.metrics(group) if "phase" in r]
        for a, b in zip(rows, rows[1:]):
            if a["phase"] != b["phase"]:
                return int(b["step"])
        return None


# -- plots ---------------------------------------------------------------------------------------


def _difference(res: Results, m: dict, b: dict, which: str) -> tuple[float | None, str, int | None]:
    """(difference, text, sign) of ``which`` loss, method minus baseline, judged against noise.

    sign: -1 lower beyond noise, +1 higher beyond noise, 0 within noise, None: no noise estimate.
    With per-run seed std s and n1, n2 seeds, the difference of means has standard error
    s * sqrt(1/n1 + 1/n2); we call a difference real beyond 2 standard errors.
    """
    lm, lb = m[f"{which}_loss"], b[f"{which}_loss"]
    if lm is None or lb is None:
        return None, f"{which} loss not recorded", None
    d = lm - lb
    s = res.noise(m["setting"], which)
    if s is None:
        return d, f"{which} loss {lm:.4f} vs {lb:.4f} ({d:+.4f}; seed-to-seed noise not measured)", None
    se = s * math.sqrt(1 / len(m[f"{which}_losses"] or [0]) + 1 / len(b[f"{which}_losses"] or [0]))
    sign = -1 if d < -2 * se else (1 if d > 2 * se else 0)
    return d, f"{which} loss {lm:.4f} vs {lb:.4f} ({d:+.4f}; seed-to-seed std {s:.4f}, 2 s.e. = {2 * se:.4f})", sign


def _comparisons_md(res: Results) -> list[str]:
    lines, verdicts = [], []
    recorded = res.data.get("multipliers") if isinstance(res.data.get("multipliers"), dict) else {}
    rows = ["| comparison | best method | baseline | target loss (method / baseline) | difference | seed-to-seed std "
            "| multiplier [95% interval] |", "|---|---|---|---|---|---|---|"]
    for key, c in res.comparisons.items():
        if c is None:
            lines.append(f"- **{key}**: not available (the runs for it are missing).")
            continue
        m, b = c["method"], c["baseline"]
        d, ttext, sign = _difference(res, m, b, "target")
        s = res.noise(m["setting"])
        rows.append(f"| {key} | {_desc(m)} | {_desc(b)} | {m['target_loss']:.4f} / {b['target_loss']:.4f} | {d:+.4f} "
                    f"| {_f(s)} | {_mult_text(c['multiplier'], c['interval'])} |")
        _, gtext, gsign = _difference(res, m, b, "generic")
        verdict = {-1: "replay **helped** beyond seed-to-seed noise", 1: "replay **hurt** beyond seed-to-seed noise",
                   0: "the difference is **within seed-to-seed noise** (no clear effect)",
                   None: f"{'lower' if d < 0 else 'higher'} with replay, but **not established**: seed-to-seed noise "
                         "was not measured (one seed per configuration)"}[sign]
        verdicts.append(sign)
        forgetting = {-1: "less forgetting", 1: "more forgetting", 0: "no clear change in forgetting",
                      None: "change in forgetting not established"}[gsign]
        text = (f"- **{LABELS[key][0]}** ({_desc(m)}) vs {LABELS[key][1]} ({_desc(b)}): {ttext}: {verdict}. "
                f"Forgetting: {gtext} ({forgetting}). Target data multiplier {_mult_text(c['multiplier'], c['interval'])}")
        if c.get("bootstrap"):
            bs = c["bootstrap"]
            text += (f" (percentile bootstrap over reference {bs['mode']}, {bs['resamples']} resamples, seed {bs['seed']}, "
                     f"{bs['failed']} failed refits" + (f"; {bs['note']}" if bs.get("note") else "") + ")")
        lines.append(text + f"; picked as the best of {c['candidates']} configurations.")
        rec = recorded.get(key)
        now = c["multiplier"]
        if (rec is None) != (now is None) or (rec is not None and now is not None and abs(rec - now) > 1e-6 * abs(now)):
            res.notes.append(f"results.json records {key} = {'null' if rec is None else rec}; recomputed from the records: {'null' if now is None else format(now, '.4g')}.")
    if any(v is None for v in verdicts) or not verdicts:
        head = ("Seed-to-seed noise was not measured for every setting, so differences without a noise estimate "
                "are not established." if verdicts else "No replay comparison could be made from these runs.")
    else:
        helped = sum(1 for v in verdicts if v == -1)
        head = (f"Replay lowered the held-out target loss beyond seed-to-seed noise in {helped} of {len(verdicts)} "
                f"comparisons" + ("." if helped else "; on these runs it did not clearly help."))
    caveat = ("Each method is the best of several configurations (LRs included) against one baseline; picking the "
              "best of several noisy runs flatters it, so weigh every difference against the seed-to-seed noise. A multiplier's "
              "interval covers the reference fit (and the seeds of the two compared configurations where several were "
              "run); with one seed per configuration it does not include that run's own seed noise.")
    table = [*rows, ""] if len(rows) > 2 else []
    return [head, "", *table, *lines, "", caveat]


def _markdown(res: Results, done: list[tuple[str, str, str]], skipped: list[tuple[str, str]]) -> str:
    out = ["# replaytune report", "", "Rebuilt from saved records by `replaytune report DIR`.", "", "## What was run", ""]
    for k, v in res.meta.items():
        out.append(f"- **{k}**: {v if isinstance(v, (str, int, float)) else json.dumps(v, sort_keys=True)}")
    counts = {}
    for r in res.runs:
        counts[r.get("setting")] = counts.get(r.get("setting"), 0) + 1
    out.append("- **runs**: " + (", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda t: SETTING_ORDER.get(t[0], 9)))
                                 or "none"))
    out += ["", "## Does replay help on the target domain?", "", *_comparisons_md(res), ""]
    if res.fit is not None:
        f = res.fit
        out.append(f"Reference fit: L(x) = A / x^B + C with A = {f.A:.4g}, B = {f.B:.4g}, C = {f.C:.4g} "
                   f"({len(f.xs)} reference points, rmse {_f(f.rmse, '.3g')}, {f.method} fit). Effective data of a loss L is "
                   f"(A / (L - C))^(1/B); a loss at or below C has none.")
    noise = {s: res.noise(s) for s in ("finetune", "midtrain", "reference") if any(g["setting"] == s for g in res.groups)}
    out.append("Seed-to-seed std of one run's final target loss: "
               + (", ".join(f"{s} {_f(v)}" for s, v in noise.items()) or "none") + " (`-`: not measured).")
    out += ["", "## Runs", "", "| name | setting | rho | alpha | lr | x | seed | target loss | generic loss |",
            "|---|---|---|---|---|---|---|---|---|"]
    key = lambda r: (SETTING_ORDER.get(r.get("setting"), 9), r.get("rho") or 0, -(r.get("alpha") or 1), r.get("lr") or 0,  # noqa: E731
                     r.get("x") or 0, str(r.get("seed")).zfill(6), str(r.get("name")))
    for r in sorted(res.runs, key=key):
        g = lambda k, spec=".4g": "-" if r.get(k) is None else format(r[k], spec) if isinstance(r[k], (int, float)) else str(r[k])  # noqa: E731
        out.append(f"| {r.get('name')} | {r.get('setting')} | {g('rho')} | {g('alpha')} | {g('lr', '.3g')} | {g('x')} "
                   f"| {g('seed', 'g')} | {g('target_loss', '.4f')} | {g('generic_loss', '.4f')} |")
    out += ["", "## Plots", ""] + ([] if done else ["None could be drawn (see the notes below).", ""])
    for name, title, caption in done:
        out += [f"### {title}", "", caption, "", f"![{title}](plots/{name}.png)", ""]
    if skipped or res.notes:
        out += ["## Notes and skipped plots", ""]
        out += [f"- Skipped plot **{title}**: {why}." for title, why in skipped]
        out += [f"- {n}" for n in dict.fromkeys(res.notes)]
        out.append("")
    return "\n".join(out)


def build_report(directory: str | Path, *, resamples: int = eff.RESAMPLES, seed: int = 0) -> list[Path]:
    """Write DIR/plots/*.png and DIR/report.md from DIR/results.json and run records.

    Returns the written paths (plots first, report.md last). A skipped plot's stale PNG
    from an earlier build is removed so the directory matches report.md.
    """
    d = Path(directory)
    res = Results(d, resamples, seed)
    written: list[Path] = []
    done: list[tuple[str, str, str]] = []
    skipped: list[tuple[str, str]] = []
    for name, title, fn, caption in PLOTS:
        path = d / "plots" / f"{name}.png"
        try:
            fig = fn(res)
        except Skip as exc:
            skipped.append((title, str(exc)))
            path.unlink(missing_ok=True)
            continue
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI)
        write_bytes(path, buf.getvalue())
        written.append(path)
        done.append((name, title, caption))
    md = _markdown(res, done, skipped)
    write_bytes(d / "report.md", md.encode("utf-8"))
    written.append(d / "report.md")
    return written
