"""Plots and report.md from a results directory, reading saved records only.

Inputs (all under DIR): ``results.json`` (runs, multipliers, efficiency, noise, meta) and,
for curve plots, each run's ``run_dir`` with ``metrics.jsonl`` and ``record.json``.
Outputs: ``DIR/plots/*.png`` (matplotlib's Agg canvas, no pyplot state, dpi 120) and
``DIR/report.md``, each written to a temporary name and renamed into place.

Everything is recomputed from the records: the reference fit from the ``reference`` runs
(else from ``efficiency.reference`` points, else the saved ``efficiency.fit``), the paper's
three comparisons (:func:`replaytune.study.efficiency.compare_best`) and their
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

from replaytune.study import efficiency as eff
from replaytune.fsio import write_bytes
from replaytune.study.plots import DPI, LABELS, PLOTS, SETTING_ORDER, _desc, _f, _mult_text
from replaytune.study.results import Results, Skip


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
            f"| multiplier [{round(100 * res.level)}% interval] | reference curve |", "|---|---|---|---|---|---|---|---|"]
    for key, c in res.comparisons.items():
        if c is None:
            lines.append(f"- **{key}**: not available (the runs for it are missing).")
            continue
        m, b = c["method"], c["baseline"]
        d, ttext, sign = _difference(res, m, b, "target")
        s = res.noise(m["setting"])
        rows.append(f"| {key} | {_desc(m)} | {_desc(b)} | {m['target_loss']:.4f} / {b['target_loss']:.4f} | {d:+.4f} "
                    f"| {_f(s)} | {_mult_text(c['multiplier'], c['interval'])} | {c.get('reference') or '-'} |")
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
        if c.get("paired"):
            text += (f" ({round(100 * c.get('level', res.level))}% {c['interval_method']}, {c['seeds']} seeds; "
                     f"between the two measured reference points that bracket it: "
                     f"{_f(c.get('bracket_multiplier'), '.2f')}x"
                     + ("" if c.get("interpolated") else "; effective data outside the measured range: extrapolated")
                     + ")")
        if c.get("bootstrap"):
            bs = c["bootstrap"]
            text += (f" (percentile bootstrap over reference {bs['mode']}, {bs['resamples']} resamples, seed {bs['seed']}, "
                     f"{bs['failed']} failed refits" + (f"; {bs['note']}" if bs.get("note") else "") + ")")
        if c.get("error"):
            text += f" (no multiplier: {c['error']})"
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
              "best of several noisy runs flatters it, so weigh every difference against the seed-to-seed noise. A paired "
              "interval resamples whole seeds (every arm, the baseline and the reference curve of a seed together) and "
              "redoes the choice of the best arm in every resample; where the runs have validation losses every choice "
              "is made on them and every reported loss comes from the separate test half. An unpaired bootstrap "
              "interval (runs without common seeds) covers the reference fit and the two compared configurations' seeds.")
    table = [*rows, ""] if len(rows) > 2 else []
    return [head, "", *table, *lines, "", caveat]


FAMILY_TEXT = {
    "uniform": "target data mixed uniformly through one run at each amount x, the paper's definition",
    "baseline": "each setting's own baseline recipe repeated at each amount x: fine-tuning without replay for the "
                "fine-tuning multiplier, mid-training with rho = 0, alpha = 1 for the mid-training ones; a multiplier "
                "reads 'replay is worth k times more target data under the same recipe'",
}


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
    out.append(f"Reference family: **{res.family}** ({FAMILY_TEXT[res.family]}).")
    for name, c in res.curves.items():
        if "fit" not in c:
            out.append(f"- Reference curve '{name}': no fit ({c['error']}).")
            continue
        f = c["fit"]
        if c.get("kind") == "log-linear":
            out.append(f"- Reference curve '{name}': log-linear, L = {c['intercept']:.4f} - {c['slope_per_doubling']:.4f} "
                       f"log2 x ({c['slope_per_doubling']:.3f} nats per doubling of unique target data): the paper's "
                       f"A / x^B + C does not identify its asymptote here (A = {f.A:.4g}, B = {f.B:.4g}, C = {f.C:.4g}, "
                       f"{f.method} fit), so the multipliers come from the line ({len(f.xs)} points).")
            continue
        out.append(f"- Reference curve '{name}': L(x) = A / x^B + C with A = {f.A:.4g}, B = {f.B:.4g}, C = {f.C:.4g} "
                   f"({len(f.xs)} reference points, rmse {_f(f.rmse, '.3g')}, {f.method} fit).")
    if res.curves:
        out += ["", "Effective data of a loss L is (A / (L - C))^(1/B); a loss at or below C has none."]
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
