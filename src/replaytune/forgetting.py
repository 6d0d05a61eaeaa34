"""The forgetting report: held-out loss of the base model and the fine-tuned model, side by side.

Read from the run's records only (``metrics.jsonl`` and ``record.json``), so it can be rebuilt
from disk. The base model's losses are the evaluation at step 0 (``eval.at_start``): before
the first update the weights are the pretrained ones (LoRA adapters start at B = 0, so the
LoRA model at step 0 is the base model too). The fine-tuned losses are the final evaluation.
Both score exactly the same held-out sequences (a fixed set per source, see
``train/evaluation.py``).

* target: lower is the point of fine-tuning;
* generic (the replay source's held-out split): the rise is forgetting. With
  ``--replay-fraction 0`` the replay source is still evaluated, so the baseline's forgetting
  is measured on the same text.

Downstream tasks (``--eval-tasks xcopa_eu``) go through lm-evaluation-harness, an optional
extra (``pip install 'replaytune[eval]'``); without it they are skipped with a message saying
so, and the loss report stands on its own.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

from replaytune.rundir import RECORD
from replaytune.train.metrics import atomic_write_json, atomic_write_text, read_metrics

REPORT_JSON = "forgetting.json"
REPORT_MD = "forgetting.md"
LM_EVAL_MISSING = (
    "lm-evaluation-harness is not installed; install the optional extra with "
    "pip install 'replaytune[eval]' (lm-eval>=0.4) and run again to score these tasks"
)


def held_out(store, seq_len: int, sequences: int) -> dict[str, int]:
    """Size of the fixed evaluation set of one store: sequences and loss-bearing tokens."""
    from replaytune.train.evaluation import IGNORE, eval_ids, make_inputs

    ids = eval_ids(store.val, seq_len, sequences)
    if len(ids) == 0:
        return {"sequences": 0, "loss_tokens": 0}
    _, targets = make_inputs(store.val, ids, seq_len)
    return {"sequences": int(len(ids)), "loss_tokens": int((targets != IGNORE).sum())}


def build_report(run_dir: str | Path, *, plan: dict[str, Any] | None = None, held: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Base (step 0) and final held-out loss per source, with change and perplexities."""
    run_dir = Path(run_dir)
    record = json.loads((run_dir / RECORD).read_text())
    metrics = read_metrics(run_dir)
    base = next((m["eval"] for m in metrics if m.get("kind") == "eval" and m.get("step") == 0), None) or {}
    final = (record.get("final") or {}).get("eval") or {}
    rows = {}
    for name in record["config"]["data"]["sources"]:
        b, f = base.get(name), final.get(name)
        rows[name] = {
            "base": b,
            "finetuned": f,
            "change": (f - b) if b is not None and f is not None else None,
            "base_perplexity": math.exp(b) if b is not None else None,
            "finetuned_perplexity": math.exp(f) if f is not None else None,
            **(held or {}).get(name, {}),
        }
    generic = rows.get("generic", {})
    return {
        "loss": rows,
        "forgetting": generic.get("change"),
        "target_gain": (-rows["target"]["change"]) if rows.get("target", {}).get("change") is not None else None,
        "plan": plan or {},
        "steps": record.get("steps"),
        "tokens": record.get("tokens"),
        "epochs": record.get("epochs"),
        "wall_time_s": record.get("wall_time_s"),
        "tokens_per_s": record.get("tokens_per_s"),
        "downstream": None,
    }


def _num(value: float | None, fmt: str = ".4f", signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return format(value, ("+" if signed else "") + fmt)


def format_report(report: dict[str, Any]) -> str:
    """The report as Markdown (printed and saved as forgetting.md)."""
    plan = report.get("plan") or {}
    rho = plan.get("replay_fraction")
    head = "# Forgetting report\n\n"
    if rho is not None:
        head += (f"Replay fraction {rho:g} (counted in {plan.get('replay_unit', 'tokens')}), {plan.get('epochs', 0):g} "
                 f"target epochs, {report.get('steps')} steps.\n\n")
    lines = ["| held-out set | sequences | loss tokens | base model | fine-tuned | change |", "|---|---:|---:|---:|---:|---:|"]
    for name, row in report["loss"].items():
        label = f"{name} ({row['source']})" if row.get("source") else name
        lines.append(
            f"| {label} | {row.get('sequences', 'n/a')} | {row.get('loss_tokens', 'n/a')} | {_num(row['base'])} | "
            f"{_num(row['finetuned'])} | {_num(row['change'], signed=True)} |"
        )
    notes = []
    if report["loss"].get("target", {}).get("change") is not None:
        notes.append(f"Target loss {_num(report['loss']['target']['change'], signed=True)} nats per token (lower is better).")
    if report.get("forgetting") is not None:
        f = report["forgetting"]
        notes.append(f"Generic loss {_num(f, signed=True)}: " + ("forgetting." if f > 0 else "no forgetting measured."))
    elif "generic" not in report["loss"]:
        notes.append("No replay source given: generic loss (forgetting) not measured; pass --replay to measure it.")
    for name, row in report["loss"].items():
        if row.get("sequences") == 0:
            notes.append(f"{name}: the held-out split is shorter than one sequence; hold out more documents (val).")
    down = report.get("downstream")
    if down:
        notes.append(format_downstream(down))
    return head + "\n".join(lines) + ("\n\n" + "\n".join(notes) if notes else "") + "\n"


def format_downstream(down: dict[str, Any]) -> str:
    tasks = ", ".join(down.get("tasks", []))
    if down.get("skipped"):
        return f"Downstream tasks ({tasks}) skipped: {down['skipped']}"
    if down.get("error"):
        return f"Downstream tasks ({tasks}) failed: {down['error']}"
    lines = [f"Downstream tasks (lm-evaluation-harness): {tasks}", "", "| task | metric | base model | fine-tuned |", "|---|---|---:|---:|"]
    results = down.get("results", {})
    for task, metrics in results.get("finetuned", {}).items():
        for metric, value in metrics.items():
            base = results.get("base", {}).get(task, {}).get(metric)
            lines.append(f"| {task} | {metric} | {_num(base)} | {_num(value)} |")
    return "\n".join(lines)


def write_report(out_dir: str | Path, report: dict[str, Any]) -> tuple[Path, Path]:
    out = Path(out_dir)
    atomic_write_json(out / REPORT_JSON, report)
    atomic_write_text(out / REPORT_MD, format_report(report))
    return out / REPORT_JSON, out / REPORT_MD


def downstream(
    tasks: Sequence[str],
    *,
    base: Callable[[], tuple[Any, Any]],
    tuned: Callable[[], tuple[Any, Any]],
    limit: int | None = None,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Score ``tasks`` with lm-evaluation-harness on the base and the fine-tuned model.

    ``base`` / ``tuned`` return ``(model, tokenizer)`` when called (loaded only if the harness
    is installed). Returns ``{"tasks", "results": {"base"|"finetuned": {task: {metric:
    value}}}}``, ``{"tasks", "skipped": why}`` without the harness, or ``{"tasks", "error"}``
    when it fails (e.g. a task's dataset cannot be downloaded offline).
    """
    tasks = list(tasks)
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        return {"tasks": tasks, "skipped": LM_EVAL_MISSING}
    results: dict[str, Any] = {}
    for label, load in (("base", base), ("finetuned", tuned)):
        try:
            model, tok = load()
            lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size)
            out = lm_eval.simple_evaluate(model=lm, tasks=tasks, limit=limit)
        except Exception as exc:  # the harness raises many types (missing dataset, offline, bad task name)
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            return {"tasks": tasks, "error": f"{label} model: {type(exc).__name__}: {first}"}
        results[label] = {
            task: {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            for task, metrics in (out or {}).get("results", {}).items()
        }
    return {"tasks": tasks, "results": results}
