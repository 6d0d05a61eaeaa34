"""A synthetic results directory shaped like the study's output (results.json + run records).

Numbers come from simple closed forms (no training): final target losses fall with rho,
reference losses follow L(x) = A / x^B + C exactly, and curves show a switch and an
overfitting gap. Good enough to exercise every plot and every table of the report.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REF = (2.0, 0.35, 3.5)  # A, B, C of the synthetic reference curve
REF_XS = (8.0, 16.0, 32.0, 64.0, 128.0)
BATCH, TARGET_SEQS, FT_EPOCHS, MT_STEPS = 16, 16, 32, 320


def _curve_rows(switch, steps, rho, final_t, final_g, setting, phases):
    """metrics.jsonl rows: eval every 8 steps and at the end; target epochs advance after the switch."""
    rows, epochs, tokens = [], 0.0, 0
    e_end = FT_EPOCHS
    overfit = 0.35 * (1 - rho)  # how far held-out loss rises again by the last epoch
    floor = final_t - overfit
    for step in range(steps):
        phase, pstep = phases(step)
        in_target = step >= switch
        frac = (1 - rho) if in_target else 0.0
        epochs += BATCH * frac / TARGET_SEQS
        tokens += int(BATCH * frac * 128)
        pre_t = 6.6 - 0.4 * min(step, switch) / max(switch, 1)
        held_t = pre_t if not in_target else floor + (pre_t - floor) * math.exp(-epochs / 3) + overfit * (epochs / e_end) ** 2
        since = step - switch
        g_pre = 5.5 - 1.2 * min(step, switch) / max(switch, 1)
        held_g = g_pre if not in_target else g_pre + (final_g - g_pre) * (1 - math.exp(-since / 6))
        spike = 0.6 * (1 - rho) * math.exp(-since / 3) if in_target and setting == "finetune" else 0.0
        train_t = held_t + spike - 1.3 * (epochs / e_end) * (1 - 0.7 * rho) + 0.03 * math.sin(step) if in_target else None
        rows.append({
            "kind": "train", "step": step, "phase": phase, "phase_step": pstep, "lr": 1e-3, "loss": held_g,
            "train_loss": {"python": train_t, "manpages": held_g + 0.05 * math.cos(step)},
            "tokens": {"python": tokens, "manpages": step * BATCH * 128 - tokens},
            "epochs": {"python": round(epochs, 6), "manpages": step / 400},
            "tokens_per_s": 6000.0, "elapsed_s": step * 0.3,
        })
        if step % 8 == 7 or step == steps - 1:
            rows.append({"kind": "eval", "step": step + 1, "phase": phase, "phase_step": pstep + 1,
                         "eval": {"python": held_t + spike, "manpages": held_g}, "epochs": {"python": round(epochs, 6)}})
    return rows


def _write_run(root: Path, rel: str, rows, phases_rec, final_t, final_g):
    d = root / rel
    d.mkdir(parents=True)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "record.json").write_text(json.dumps({"phases": phases_rec, "final": {"eval": {"python": final_t, "manpages": final_g}}}))


def make_results(root: Path, *, curves: bool = True, seeds: bool = True) -> Path:
    """Write ROOT/results.json (+ run dirs when ``curves``); returns ROOT."""
    root.mkdir(parents=True, exist_ok=True)
    A, B, C = REF
    runs = [{"name": "pretrain", "setting": "pretrain", "rho": None, "alpha": None, "lr": 3e-3,
             "target_loss": 6.2, "generic_loss": 4.3, "run_dir": None, "x": None, "seed": 0}]
    for x in REF_XS:
        runs.append({"name": f"ref-x{x:g}", "setting": "reference", "rho": None, "alpha": None, "lr": 3e-3,
                     "target_loss": A / x**B + C, "generic_loss": 4.4, "run_dir": None, "x": x, "seed": 0})
    total_ft = 2 * FT_EPOCHS + 160  # pre-training shortened by what fine-tuning grows
    for rho in (0.0, 0.25, 0.5, 0.75):
        for lr in (3e-4, 1e-3):
            for seed in ((0, 1) if seeds and rho in (0.0, 0.5) else (0,)):
                t = 4.55 - 0.25 * rho * (1 - rho) * 4 + (0.06 if lr == 1e-3 else 0.0) + 0.01 * seed
                g = 4.6 - 0.5 * rho
                name = f"ft-rho{rho:g}-lr{lr:g}-s{seed}"
                rel = f"runs/{name}" if curves else None
                if curves:
                    ft_steps = math.ceil(FT_EPOCHS / (1 - rho))
                    sw = total_ft - ft_steps
                    phases = lambda s, sw=sw: ("pretrain", s) if s < sw else ("finetune", s - sw)  # noqa: E731
                    rec = [{"name": "pretrain", "start_step": 0, "steps": sw, "schedule": {"setting": "constant"}},
                           {"name": "finetune", "start_step": sw, "steps": ft_steps,
                            "schedule": {"setting": "finetune", "replay": rho}}]
                    _write_run(root, rel, _curve_rows(sw, total_ft, rho, t, g, "finetune", phases), rec, t, g)
                runs.append({"name": name, "setting": "finetune", "rho": rho, "alpha": None, "lr": lr,
                             "target_loss": t, "generic_loss": g, "run_dir": rel, "x": None, "seed": seed})
    gamma = FT_EPOCHS * TARGET_SEQS / BATCH / MT_STEPS
    for rho in (0.0, 0.25, 0.5, 0.75):
        for alpha in (1.0, 0.25):
            t = 4.3 - 0.3 * rho * (1 - rho) * 4 + 0.1 * (1 - alpha)
            g = 4.2 - 0.2 * rho
            name = f"mt-rho{rho:g}-a{alpha:g}"
            rel = f"runs/{name}" if curves else None
            if curves:
                delta = gamma * alpha / (1 - rho)
                sw = math.floor((1 - delta) * MT_STEPS)
                rec = [{"name": "train", "start_step": 0, "steps": MT_STEPS,
                        "schedule": {"setting": "midtrain", "switch_step": sw, "replay": rho, "alpha": alpha}}]
                rows = _curve_rows(sw, MT_STEPS, rho, t, g, "midtrain", lambda s: ("train", s))
                _write_run(root, rel, rows, rec, t, g)
            runs.append({"name": name, "setting": "midtrain", "rho": rho, "alpha": alpha, "lr": 3e-3,
                         "target_loss": t, "generic_loss": g, "run_dir": rel, "x": None, "seed": 0})
    results = {
        "runs": runs,
        "multipliers": {"finetune_replay": None, "midtrain_replay": None, "full_schedule": None},
        "efficiency": {},
        "noise": {"midtrain": 0.012} if seeds else {},
        "meta": {"model": "llama d128 x 4 layers (1.3M params)", "target_source": "python", "generic_source": "manpages",
                 "steps": MT_STEPS, "x_unit": "sequences", "wall_time_s": 1234.5},
    }
    (root / "results.json").write_text(json.dumps(results, indent=1))
    return root


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    return make_results(tmp_path / "out")
