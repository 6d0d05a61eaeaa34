"""A results directory loaded for analysis: results.json and the run records it points to.

:class:`Results` reads ``DIR/results.json`` and derives what the report and the plots need
(seed groups, the reference fit, the paper's three comparisons, seed-to-seed noise, each
run's metrics and switch step) from saved records only, never from live objects, so both
can be rebuilt from disk. ``replaytune.study.plots`` draws from it; ``replaytune.study.report`` writes
the plots and report.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from replaytune.study import efficiency as eff
from replaytune import rundir
from replaytune.errors import DataError
from replaytune.train.metrics import read_metrics


class Skip(Exception):
    """A plot cannot be drawn from the records; the message says what is missing."""


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
        saved_eff = self.data.get("efficiency") if isinstance(self.data.get("efficiency"), dict) else {}
        family = saved_eff.get("reference") if isinstance(saved_eff.get("reference"), str) else self.meta.get("reference_family")
        self.family = family if family in eff.FAMILIES else "uniform"
        level = saved_eff.get("level")
        self.level = float(level) if isinstance(level, float) and 0 < level < 1 else eff.LEVEL
        self.resamples, self.seed = resamples, seed
        # curve name -> {"xs", "losses", and "fit" (a Fit) or "error"}
        self.curves: dict[str, dict[str, Any]] = {}
        if self.family == "baseline" or eff.reference_points(self.runs)[0]:
            self.comparisons, self.curves = eff.compare(self.runs, self.family, resamples=resamples, seed=seed,
                                                        level=self.level)
            for name, c in self.curves.items():
                if "error" in c:
                    self.notes.append(f"Reference curve '{name}': no fit, so no multiplier from it: {c['error']}.")
        else:
            fit = self._saved_fit(saved_eff)
            if fit is not None:
                self.curves["uniform"] = {"xs": list(fit.xs), "losses": list(fit.losses), "fit": fit}
                self.comparisons = {k: v and {**v, "reference": "uniform"} for k, v in
                                    eff.compare_best(fit, self.runs, resamples=resamples, seed=seed, level=self.level).items()}
            else:
                self.comparisons = {
                    k: (p and {**p, "multiplier": None, "interval": None, "method_x": None, "baseline_x": None,
                               "bootstrap": None, "reference": None})
                    for k, p in eff.best_runs(self.runs).items()
                }
        self._metrics: dict[str, list[dict[str, Any]]] = {}

    @property
    def fit(self) -> eff.Fit | None:
        """The first reference curve's fit (the only one under the uniform family)."""
        return next((c["fit"] for c in self.curves.values() if "fit" in c), None)

    def _saved_fit(self, saved_eff: dict[str, Any]) -> eff.Fit | None:
        """No reference runs: points in the `efficiency` input format, else the saved fit."""
        if isinstance(saved_eff.get("reference"), list):  # the `efficiency` input format
            pts = [p for p in saved_eff["reference"] if isinstance(p, dict) and p.get("x") is not None
                   and p.get("loss") is not None]
            xs, losses = [float(p["x"]) for p in pts], [float(p["loss"]) for p in pts]
            if xs:
                try:
                    return eff.fit_reference(xs, losses)
                except eff.FitError as exc:
                    self.notes.append(f"Reference fit from the saved reference points failed: {exc}.")
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
        return eff.pooled_std([g for g in self.groups if g["setting"] == setting], which)

    def best_lr(self, setting: str) -> dict[tuple[float, float], dict[str, Any]]:
        """(rho, alpha) -> the group with the best LR (lowest mean target loss)."""
        mine = [g for g in self.groups if g["setting"] == setting and not g["reference"]]  # methods, not references
        return eff.best_per(mine, lambda g: (g["rho"], g["alpha"]))

    # -- run records ---------------------------------------------------------------------------
    def metrics(self, group: dict[str, Any]) -> list[dict[str, Any]]:
        run = group["run"]
        rel = run.get("run_dir")
        if not rel:
            raise Skip(f"run '{run.get('name')}' has no run_dir in results.json")
        path = self.dir / rel / rundir.METRICS
        key = str(path)
        if key not in self._metrics:
            if not path.is_file():
                raise Skip(f"{path.relative_to(self.dir)} not found")
            try:
                self._metrics[key] = read_metrics(path)
            except DataError as exc:
                raise Skip(str(exc).replace(f"{self.dir}/", "")) from None
        return self._metrics[key]

    def switch_step(self, group: dict[str, Any]) -> int | None:
        """Global step where target data starts in earnest: a two-stage switch or a new phase.

        From record.json phases (a schedule's ``switch_step`` is counted from its phase's
        ``start_step``), else the row's own ``switch_step`` in results.json, else the first
        change of ``phase`` in metrics.jsonl.
        """
        rel = group["run"].get("run_dir")
        path = self.dir / rel / rundir.RECORD if rel else None
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
