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
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from replaytune import efficiency as eff
from replaytune.errors import DataError

REPLAY = "#1f77b4"  # blue: runs with replay, everywhere
NO_REPLAY = "#d62728"  # red: runs without replay (rho = 0), everywhere
NEUTRAL = "#444444"
DPI = 120
LOSS = "loss (nats/token)"
LABELS = {
    "finetune_replay": ("fine-tuning + replay", "fine-tuning, no replay"),
    "midtrain_replay": ("mid-training, replay only (alpha=1)", "mid-training, rho=0, alpha=1"),
    "full_schedule": ("mid-training, best (rho, alpha)", "mid-training, rho=0, alpha=1"),
}
SETTING_ORDER = {"pretrain": 0, "reference": 1, "finetune": 2, "midtrain": 3}


class Skip(Exception):
    """A plot cannot be drawn from the records; the message says what is missing."""


# -- small helpers -----------------------------------------------------------------------------


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _f(v: Any, spec: str = ".4f") -> str:
    return "-" if v is None else format(float(v), spec)


def _desc(g: dict[str, Any]) -> str:
    """'rho=0.5, alpha=1, lr=3e-4' for a run group (alpha only in mid-training)."""
    parts = [f"rho={g['rho']:g}"]
    if g["setting"] == "midtrain":
        parts.append(f"alpha={g['alpha']:g}")
    if g.get("lr") is not None:
        parts.append(f"lr={float(g['lr']):.3g}")
    return ", ".join(parts)


def _mult_text(m: float | None, interval: list | None) -> str:
    if m is None:
        return "none (loss at or below the asymptote C: no finite effective data)"
    text = f"{m:.2f}x"
    if interval is not None:
        lo, hi = interval
        text += f" [{_f(lo, '.2f')}, {'unbounded' if hi is None else format(hi, '.2f')}]"
    return text


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


def _figure(nrows: int, ncols: int, width: float = 5.2, height: float = 3.6):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows), dpi=DPI, layout="constrained")
    axes = np.atleast_2d(fig.subplots(nrows, ncols, squeeze=False))
    for ax in axes.flat:
        ax.grid(True, alpha=0.3)
    return fig, axes


def plot_loss_vs_rho(res: Results):
    settings = [s for s in ("finetune", "midtrain") if res.best_lr(s)]
    if not settings:
        raise Skip("no fine-tuning or mid-training runs")
    fig, axes = _figure(len(settings), 2)
    for row, setting in zip(axes, settings):
        best = res.best_lr(setting)
        alphas = sorted({a for _, a in best}, reverse=True) if setting == "midtrain" else [1.0]
        cmap = ["#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
        for ax, which in zip(row, ("target", "generic")):
            for i, alpha in enumerate(alphas):
                gs = sorted((g for (r, a), g in best.items() if a == alpha), key=lambda g: g["rho"])
                ys = [g[f"{which}_loss"] for g in gs]
                if all(y is None for y in ys):
                    continue
                rho = np.array([g["rho"] for g in gs])
                y = np.array([np.nan if v is None else v for v in ys])
                err = [g[f"{which}_std"] for g in gs]
                n = res.noise(setting, which)
                err = np.array([e if e is not None else (n or 0.0) for e in err])
                color = REPLAY if alpha == 1.0 else cmap[i % len(cmap)]
                label = "fine-tuning" if setting == "finetune" else f"alpha={alpha:g}"
                ax.errorbar(rho, y, yerr=err if err.any() else None, color=color, marker="o", capsize=3,
                            lw=2.2 if alpha == 1.0 else 1.3, ls="-" if alpha == 1.0 else "--", label=label)
                zero = rho == 0
                ax.plot(rho[zero], y[zero], "o", color=NO_REPLAY, ms=8, zorder=5,
                        label="rho=0 (no replay)" if i == 0 else None)
            name = "Fine-tuning" if setting == "finetune" else "Mid-training"
            src = res.target if which == "target" else res.generic
            ax.set_title(f"{name}: held-out {which} loss ({src})")
            ax.set_xlabel("replay fraction rho (generic share of the target stage)")
            ax.set_ylabel(f"final {which} {LOSS}")
            ax.legend(fontsize=8)
    fig.suptitle("Final loss vs replay fraction (best LR per point; error bars: seed-to-seed std)")
    return fig


def plot_heatmap(res: Results):
    best = res.best_lr("midtrain")
    if not best:
        raise Skip("no mid-training runs")
    rhos = sorted({r for r, _ in best})
    alphas = sorted({a for _, a in best}, reverse=True)
    grid = np.full((len(alphas), len(rhos)), np.nan)
    for (r, a), g in best.items():
        grid[alphas.index(a), rhos.index(r)] = g["target_loss"]
    fig, axes = _figure(1, 1, width=1.3 * len(rhos) + 2.6, height=0.8 * len(alphas) + 1.8)
    ax = axes[0, 0]
    ax.grid(False)
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis_r", aspect="auto")
    lo, hi = np.nanmin(grid), np.nanmax(grid)
    best_cell = np.unravel_index(np.nanargmin(grid), grid.shape)
    for i in range(len(alphas)):
        for j in range(len(rhos)):
            v = grid[i, j]
            if np.isnan(v):
                ax.text(j, i, "not run", ha="center", va="center", color=NEUTRAL, fontsize=8)
                continue
            dark = hi > lo and (v - lo) / (hi - lo) > 0.5  # viridis_r: high losses are dark
            text = f"{v:.3f}" + ("\nbaseline" if rhos[j] == 0 and alphas[i] == 1 else "")
            ax.text(j, i, text, ha="center", va="center", fontsize=9, color="white" if dark else "black",
                    fontweight="bold" if (i, j) == best_cell else "normal")
    i, j = best_cell
    from matplotlib.patches import Rectangle

    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec=REPLAY, lw=3))
    ax.set_xticks(range(len(rhos)), [f"{r:g}" for r in rhos])
    ax.set_yticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    ax.set_xlabel("replay fraction rho (generic share of Stage 2)")
    ax.set_ylabel("alpha (share of target data in Stage 2)")
    ax.set_title(f"Mid-training: final held-out target loss ({res.target}, nats/token)\nbest LR per cell; boxed: best")
    fig.colorbar(im, ax=ax, label=f"target {LOSS}")
    return fig


def plot_fit(res: Results):
    fit = res.fit
    if fit is None:
        raise Skip("no reference fit (needs reference runs at >= 3 amounts of target data)")
    fig, axes = _figure(1, 1, width=8.5, height=6.5)
    ax = axes[0, 0]
    placed, unplaced = [], []
    markers = {"finetune_replay": "s", "midtrain_replay": "D", "full_schedule": "^"}
    for key, c in res.comparisons.items():
        if c is None:
            continue
        for g, x, color, fill, label in (
            (c["baseline"], c["baseline_x"], NO_REPLAY, "white", f"{LABELS[key][1]} (baseline)"),
            (c["method"], c["method_x"], REPLAY, REPLAY, f"{LABELS[key][0]}, {_desc(c['method'])}"),
        ):
            if x is None:
                unplaced.append((g["target_loss"], color, f"{label}: loss {g['target_loss']:.3f} <= C, no finite effective data"))
            else:
                mult = "" if g is c["baseline"] or c["multiplier"] is None else ": " + _mult_text(c["multiplier"], c["interval"])
                placed.append((x, g["target_loss"], color, fill, markers[key], label + mult))
    xs = list(fit.xs) + [p[0] for p in placed]
    lo, hi = (min(xs) / 1.6, max(xs) * 1.6) if xs else (0.5, 32)
    grid = np.geomspace(lo, hi, 200)
    ax.plot(grid, fit.loss_at(grid), color=NEUTRAL, lw=2,
            label=f"fit $L(x) = {fit.A:.3g}\\,/\\,x^{{{fit.B:.3g}}} + {fit.C:.3g}$")
    ax.axhline(fit.C, color=NEUTRAL, ls=":", lw=1, label=f"asymptote C = {fit.C:.3f}")
    if fit.xs:
        ax.plot(fit.xs, fit.losses, "o", color="black", ms=6, label="reference runs (target mixed uniformly)")
    seen = set()
    for x, y, color, fill, m, label in placed:
        if label in seen:
            label = None
        seen.add(label)
        ax.plot([x], [y], m, color=color, mfc=fill, mew=2, ms=9, label=label, zorder=5)
    for y, color, label in unplaced:
        ax.axhline(y, color=color, ls="--", lw=1, label=label)
    ax.set_xscale("log")
    unit = res.meta.get("x_unit")
    ax.set_xlabel("unique target data x" + (f" ({unit})" if unit else "") + ", log scale; methods at their effective data")
    ax.set_ylabel(f"final held-out target {LOSS}")
    ax.set_title(f"Target data efficiency ({res.target}): reference fit and each method's best run\n"
                 "multiplier = effective data of the method / of its baseline [95% bootstrap interval]")
    fig.legend(fontsize=8, loc="outside lower center", ncols=1)  # below the axes: never over the points
    return fig


def _series(rows, kind: str, field: str, src: str, xkey: Callable[[dict], float | None]):
    pts = []
    for r in rows:
        if r.get("kind") != kind:
            continue
        v = (r.get(field) or {}).get(src)
        x = xkey(r)
        if v is not None and x is not None:
            pts.append((float(x), float(v)))
    return np.array(pts).reshape(-1, 2)


def _smooth(y: np.ndarray, span: int) -> np.ndarray:
    """Exponential moving average (span in points): per-batch training loss is noisy."""
    a, out, m = 2.0 / (span + 1), np.empty_like(y), y[0] if y.size else 0.0
    for i, v in enumerate(y):
        m = a * v + (1 - a) * m
        out[i] = m
    return out


def _pairs(res: Results) -> list[tuple[str, dict, dict]]:
    out = []
    for key, title in (("finetune_replay", "Fine-tuning"), ("midtrain_replay", "Mid-training (alpha=1)")):
        c = res.comparisons.get(key)
        if c is not None:
            out.append((title, c["baseline"], c["method"]))
    if not out:
        raise Skip("no replay vs no-replay pair (fine-tuning or mid-training alpha=1)")
    return out


def plot_switch(res: Results):
    rows, skipped = [], []
    for title, base, rep in _pairs(res):
        try:
            sw = {id(g): res.switch_step(g) for g in (base, rep)}
            data = {id(g): res.metrics(g) for g in (base, rep)}
        except Skip as exc:
            skipped.append(f"{title}: {exc}")
            continue
        if all(v is None for v in sw.values()):
            skipped.append(f"{title}: no switch step or phase boundary in the records")
            continue
        rows.append((title, base, rep, sw, data))
    if not rows:
        raise Skip("; ".join(skipped))
    fig, axes = _figure(len(rows), 2, width=6.0)
    for axrow, (title, base, rep, sw, data) in zip(axes, rows):
        s0 = min(v for v in sw.values() if v is not None)
        end = max(int(r.get("step", 0)) for g in (base, rep) for r in data[id(g)]) if any(data.values()) else s0 + 1
        start = max(0, s0 - max(end - s0, 1))  # as many steps before the first switch as after it
        for ax, src, which in zip(axrow, (res.target, res.generic), ("target", "generic")):
            for g, color, name in ((base, NO_REPLAY, "no replay"), (rep, REPLAY, f"replay ({_desc(rep)})")):
                step = lambda r: r.get("step") if r.get("step", -1) >= start else None  # noqa: E731
                ev = _series(data[id(g)], "eval", "eval", src, step)
                tr = _series(data[id(g)], "train", "train_loss", src, step)
                if tr.size:
                    ax.plot(tr[:, 0], tr[:, 1], color=color, lw=0.7, alpha=0.35,
                            label=f"{name}: training batches")
                if ev.size:
                    ax.plot(ev[:, 0], ev[:, 1], "o-", color=color, lw=2, ms=4, label=f"{name}: held-out")
                if sw[id(g)] is not None:
                    ax.axvline(sw[id(g)], color=color, ls="--", lw=1.2)
            ax.set_title(f"{title}: {which} loss ({src})")
            ax.set_xlabel("training step")
            ax.set_ylabel(f"{which} {LOSS}")
        axrow[0].legend(fontsize=7, loc="best")  # the generic panel uses the same colors and styles
    fig.suptitle("Distribution shift: loss around the switch to target data (dashed lines), with and without replay")
    res.notes.extend(f"Switch plot: skipped {s}." for s in skipped)
    return fig


def plot_overfitting(res: Results):
    panels, skipped = [], []
    for title, base, rep in _pairs(res):
        try:
            panels.append((title, [(g, res.metrics(g)) for g in (base, rep)]))
        except Skip as exc:
            skipped.append(f"{title}: {exc}")
    epochs = lambda r: (r.get("epochs") or {}).get(res.target)  # noqa: E731
    drawn = []
    for title, runs in panels:
        series = [(g, _series(rows, "eval", "eval", res.target, epochs), _series(rows, "train", "train_loss", res.target, epochs))
                  for g, rows in runs]
        if not any((ev[:, 0] > 0).sum() >= 2 for _, ev, _ in series):
            skipped.append(f"{title}: no held-out target evaluations across target epochs")
            continue
        drawn.append((title, series))
    if not drawn:
        raise Skip("; ".join(skipped) or "no curves")
    fig, axes = _figure(1, len(drawn), width=6.0, height=4.2)
    for ax, (title, series) in zip(axes[0], drawn):
        for (g, ev, tr), color in zip(series, (NO_REPLAY, REPLAY)):
            name = "no replay" if g["rho"] == 0 else f"replay ({_desc(g)})"
            first = max(0, int(np.searchsorted(ev[:, 0], 0, side="right")) - 1)  # keep the last epoch-0 eval
            ev = ev[first:]
            tr = tr[tr[:, 0] > 0]
            if tr.size:
                ax.plot(tr[:, 0], _smooth(tr[:, 1], max(3, len(tr) // 25)), "--", color=color, lw=1.5,
                        label=f"{name}: training (smoothed)")
            ax.plot(ev[:, 0], ev[:, 1], "o-", color=color, lw=2, ms=4, label=f"{name}: held-out")
        ax.set_title(f"{title}: target loss ({res.target})")
        ax.set_xlabel(f"epochs over the unique target data ({res.target})")
        ax.set_ylabel(f"target {LOSS}")
        ax.legend(fontsize=8)
    fig.suptitle("Overfitting: training vs held-out target loss over repeated epochs (gap = memorization)")
    res.notes.extend(f"Overfitting plot: skipped {s}." for s in skipped)
    return fig


PLOTS: tuple[tuple[str, str, Callable[[Results], Any], str], ...] = (
    ("loss_vs_rho", "Final loss vs replay fraction", plot_loss_vs_rho,
     "Target loss (left) and generic loss (right, forgetting) at each replay fraction; red points have no replay."),
    ("midtrain_heatmap", "Mid-training rho x alpha grid", plot_heatmap,
     "Final target loss of every mid-training (rho, alpha); the paper's baseline is rho=0, alpha=1."),
    ("efficiency_fit", "Reference fit and effective data", plot_fit,
     "Reference runs fit L(x) = A/x^B + C; each method sits at the x a reference run would need for its loss."),
    ("switch_curves", "Loss around the switch step", plot_switch,
     "Distribution shift: the jump to target data (and, in fine-tuning, the optimizer reset) with and without replay."),
    ("overfitting_epochs", "Training vs held-out target loss over epochs", plot_overfitting,
     "Overfitting: a widening gap between training and held-out target loss means the target set is memorized."),
)


# -- report.md -------------------------------------------------------------------------------------


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
        _atomic_write(path, buf.getvalue())
        written.append(path)
        done.append((name, title, caption))
    md = _markdown(res, done, skipped)
    _atomic_write(d / "report.md", md.encode("utf-8"))
    written.append(d / "report.md")
    return written
