"""``replaytune efficiency FILE.json``: reference fit, effective data and multipliers."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from replaytune.errors import DataError

DESCRIPTION = """\
Fit L(x) = A / x^B + C to reference runs (x: unique target data, loss: final target loss),
give each run its effective data x_eff = (A / (L - C))^(1/B) and its multiplier
x_eff(run) / x_eff(baseline). A loss at or below C has no finite effective data (null).

FILE.json: {"reference": [{"x": 1, "loss": 3.2}, ...], "runs": {"name": loss, ...},
"baseline": "name"}. A run's loss may also be a list of seed losses (their mean is used).
Intervals: bootstrap over reference points (or over seeds when several losses share an x)."""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "efficiency",
        help="target data efficiency: reference fit and replay multipliers",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", metavar="FILE.json", help="reference points, run losses and the baseline's name")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--bootstrap", type=int, default=1000, metavar="N",
        help="bootstrap resamples for intervals (default 1000, ~0.5 s; 0 turns intervals off)",
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.set_defaults(func=run)


def _load(path: str) -> Any:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None


def _fmt(v: float | None, spec: str = ".4g") -> str:
    return "-" if v is None else format(v, spec)


def _interval(iv: list | None) -> str:
    if iv is None:
        return ""
    lo, hi = iv
    return f"[{_fmt(lo, '.2f')}, {'inf' if hi is None else format(hi, '.2f')}]"


def table(result: dict[str, Any]) -> str:
    """A readable rendering of :func:`replaytune.study.efficiency.analyze`'s result."""
    f = result["fit"]
    lines = [
        f"fit: L(x) = A / x^B + C   A = {f['A']:.4g}   B = {f['B']:.4g}   C = {f['C']:.4g}"
        f"   ({f['n_points']} reference points, rmse {f['rmse']:.3g}, {f['method']} fit)",
    ]
    bs = result.get("bootstrap")
    if bs:
        lines.append(
            f"intervals: {bs['level']:.0%} percentile bootstrap over reference {bs['mode']}, "
            f"{bs['resamples']} resamples, seed {bs['seed']}, {bs['failed']} failed refits"
            + (f"; {bs['note']}" if bs.get("note") else "")
        )
    lines.append("")
    names = list(result["runs"])
    w = max(4, *(len(n) for n in names))
    head = f"{'run':<{w}}  {'loss':>8}  {'effective x':>12}  {'multiplier':>10}"
    if bs:
        head += f"  {'interval':>16}"
    lines += [head, "-" * len(head)]
    for name in names:
        r = result["runs"][name]
        mult = "-" if r["multiplier"] is None else f"{r['multiplier']:.2f}x"
        row = f"{name:<{w}}  {r['loss']:>8.4f}  {_fmt(r['effective_x']):>12}  {mult:>10}"
        if bs:
            row += f"  {_interval(r.get('multiplier_interval')):>16}"
        if name == result["baseline"]:
            row += "  (baseline)"
        if r["effective_x"] is None:
            row += f"  loss <= C = {f['C']:.4g}: no finite effective data"
        lines.append(row)
    return "\n".join(lines)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def run(args: argparse.Namespace) -> int:
    from replaytune.study.efficiency import FitError, analyze, parse_input

    if args.bootstrap < 0:
        raise DataError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    data = _load(args.file)
    xs, losses, runs, baseline = parse_input(data, args.file)
    try:
        result = analyze(xs, losses, runs, baseline, resamples=args.bootstrap, seed=args.seed)
    except FitError as exc:
        raise DataError(f"{args.file}: {exc}") from None
    if args.json:
        print(json.dumps(_json_safe(result), indent=2, allow_nan=False))
    else:
        print(table(result))
    return 0
