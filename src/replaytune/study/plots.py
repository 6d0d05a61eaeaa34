"""The study's five plots, each a function of the loaded results (:class:`replaytune.study.results.Results`).

Every plot raises :class:`Skip` with the reason when its data is missing; the report
notes it instead of failing. Colours are fixed across plots: blue with replay, red without.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from replaytune.study.results import Skip

if TYPE_CHECKING:
    from replaytune.study.results import Results


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


# -- small helpers -----------------------------------------------------------------------------


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


CURVE_TEXT = {
    "uniform": "reference runs (target mixed uniformly through the run)",
    "finetune": "fine-tuning without replay at x (reference family 'baseline')",
    "midtrain": "mid-training rho = 0, alpha = 1 at x (reference family 'baseline')",
}


def plot_fit(res: Results):
    """One panel per reference curve with a fit, each method placed at its effective data."""
    fitted = [(name, c) for name, c in res.curves.items() if "fit" in c]
    if not fitted:
        raise Skip("no reference fit (needs reference runs at >= 3 amounts of target data, falling beyond their noise)")
    fig, axes = _figure(1, len(fitted), width=7.5, height=6.0)
    for ax, (name, curve) in zip(axes[0], fitted):
        _fit_panel(ax, res, name, curve["fit"], curve)
    pct = f"{round(100 * res.level)}%"
    fig.suptitle(f"Target data efficiency ({res.target}): each reference curve with the methods read off it\n"
                 f"multiplier = effective data of the method / of its baseline [{pct} bootstrap interval]")
    fig.legend(fontsize=8, loc="outside lower center", ncols=len(fitted))  # below the axes: never over the points
    return fig


def _fit_panel(ax, res: Results, name: str, fit, curve: dict | None = None) -> None:
    placed, unplaced = [], []
    markers = {"finetune_replay": "s", "midtrain_replay": "D", "full_schedule": "^"}
    for key, c in res.comparisons.items():
        if c is None or c.get("reference") != name:
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
    loglinear = (curve or {}).get("kind") == "log-linear"
    if loglinear:  # A / x^B + C did not identify C: draw the line the multipliers come from, no asymptote
        a, b = curve["intercept"], curve["slope_per_doubling"]
        ax.plot(grid, a - b * np.log2(grid), color=NEUTRAL, lw=2,
                label=f"{name}: log-linear $L = {a:.3f} - {b:.3f}\\,\\log_2 x$ (asymptote not identified)")
    else:
        ax.plot(grid, fit.loss_at(grid), color=NEUTRAL, lw=2,
                label=f"{name}: $L(x) = {fit.A:.3g}\\,/\\,x^{{{fit.B:.3g}}} + {fit.C:.3g}$")
        ax.axhline(fit.C, color=NEUTRAL, ls=":", lw=1)
    if fit.xs:
        ax.plot(fit.xs, fit.losses, "o", color="black", ms=5, alpha=0.7, label=CURVE_TEXT.get(name, name) + ", every seed")
    seen = set()
    for x, y, color, fill, m, label in placed:
        if label in seen:
            label = None
        seen.add(label)
        ax.plot([x], [y], m, color=color, mfc=fill, mew=2, ms=9, label=label, zorder=5)
    for y, color, label in unplaced:
        ax.axhline(y, color=color, ls="--", lw=1, label=label)
    ax.set_xscale("log")
    # y range from the measured losses: a steep or degenerate fit must not flatten the points
    ys = list(fit.losses) + [p[1] for p in placed] + [u[0] for u in unplaced]
    span = max(ys) - min(ys) or 0.1
    if not loglinear and fit.C > min(ys) - span:  # the asymptote in view only when it is near the data
        ys.append(fit.C)
        span = max(ys) - min(ys)
    ax.set_ylim(min(ys) - 0.15 * span, max(ys) + 0.25 * span)
    unit = res.meta.get("x_unit") or "batches"
    ax.set_xlabel(f"unique target data x ({unit}), log scale")
    ax.set_ylabel(f"final held-out target {LOSS}")
    ax.set_title(f"curve '{name}' ({curve['slope_per_doubling']:.3f} nats per doubling; C not identified)" if loglinear
                 else f"curve '{name}' (dotted: asymptote C = {fit.C:.3f})", fontsize=10)


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
    fig.suptitle("Overfitting: training vs held-out target loss\nover repeated epochs (the gap is memorization)")
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
