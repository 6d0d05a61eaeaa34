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

With several sources on a side (``target.<name>``, ``generic.<name>``) every source has its
row, and ``sides`` gives each side's loss: its sources' losses averaged with their weights
within the side (the plan's ``parts``); the target gain and the forgetting are the sides'.

Downstream tasks (``--eval-tasks xcopa_eu``) go through lm-evaluation-harness, an optional
extra (``pip install 'replaytune[eval]'``); without it they are skipped with a message saying
so, and the loss report stands on its own. The harness scores the base model and the
fine-tuned one in memory (its ``HFLM`` around the loaded model) on the same examples; tasks
come from its own definitions or from folders of the user's task YAML files
(``--eval-include DIR``, the harness's ``include_path``), which need no network when their
data files are local.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from replaytune.errors import ConfigError
from replaytune.rundir import RECORD
from replaytune.fsio import write_json, write_text
from replaytune.train.metrics import read_metrics

REPORT_JSON = "forgetting.json"
REPORT_MD = "forgetting.md"
STDERR = "_stderr"  # a downstream metric's standard error: "acc" -> "acc_stderr"
LM_EVAL_MISSING = (
    "lm-evaluation-harness is not installed; install the optional extra with "
    "pip install 'replaytune[eval]' (lm-eval>=0.4) and run again to score these tasks"
)


def held_out(store, seq_len: int, sequences: int) -> dict[str, int]:
    """Size of the fixed evaluation set of one store: sequences and loss-bearing tokens."""
    from replaytune.data.window import IGNORE, windows
    from replaytune.train.evaluation import eval_ids

    ids = eval_ids(store.val, seq_len, sequences)
    if len(ids) == 0:
        return {"sequences": 0, "loss_tokens": 0}
    targets = windows(store.val, ids, seq_len).targets
    return {"sequences": int(len(ids)), "loss_tokens": int((targets != IGNORE).sum())}


def side_loss(losses: Mapping[str, float | None], parts: Mapping[str, float]) -> float | None:
    """One side's loss: its sources' losses averaged with their parts of the side (None if one is missing).

    One source: its loss as it is. No sources: None.
    """
    if len(parts) == 1:
        return losses.get(next(iter(parts)))
    values = [losses.get(name) for name in parts]
    if not parts or any(v is None for v in values):
        return None
    return sum(parts[name] * v for name, v in zip(parts, values)) / sum(parts.values())


def _row(base: float | None, final: float | None) -> dict[str, Any]:
    return {
        "base": base,
        "finetuned": final,
        "change": (final - base) if base is not None and final is not None else None,
        "base_perplexity": math.exp(base) if base is not None else None,
        "finetuned_perplexity": math.exp(final) if final is not None else None,
    }


def build_report(run_dir: str | Path, *, plan: dict[str, Any] | None = None, held: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Base (step 0) and final held-out loss per source, with change and perplexities."""
    run_dir = Path(run_dir)
    record = json.loads((run_dir / RECORD).read_text())
    metrics = read_metrics(run_dir)
    base = next((m["eval"] for m in metrics if m.get("kind") == "eval" and m.get("step") == 0), None) or {}
    final = (record.get("final") or {}).get("eval") or {}
    rows = {name: {**_row(base.get(name), final.get(name)), **(held or {}).get(name, {})}
            for name in record["config"]["data"]["sources"]}
    sides = None
    if (plan or {}).get("sides"):  # several sources on a side: each side's loss too
        sides = {}
        for role in ("target", "generic"):
            parts = {n: plan["parts"][n] for n, r in plan["sides"].items() if r == role}
            if parts:
                sides[role] = {"sources": list(parts), **_row(side_loss(base, parts), side_loss(final, parts))}
    generic = (sides or rows).get("generic", {})
    target = (sides or rows).get("target", {})
    return {
        "loss": rows,
        **({"sides": sides} if sides is not None else {}),
        "forgetting": generic.get("change"),
        "target_gain": (-target["change"]) if target.get("change") is not None else None,
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
        ramp = f" (mean of the replay schedule {plan['replay_schedule']})" if plan.get("replay_schedule") else ""
        head += (f"Replay fraction {rho:g}{ramp} (counted in {plan.get('replay_unit', 'tokens')}), {plan.get('epochs', 0):g} "
                 f"target epochs, {report.get('steps')} steps.\n\n")
    lines = ["| held-out set | sequences | loss tokens | base model | fine-tuned | change |", "|---|---:|---:|---:|---:|---:|"]
    for name, row in report["loss"].items():
        label = f"{name} ({row['source']})" if row.get("source") else name
        lines.append(
            f"| {label} | {row.get('sequences', 'n/a')} | {row.get('loss_tokens', 'n/a')} | {_num(row['base'])} | "
            f"{_num(row['finetuned'])} | {_num(row['change'], signed=True)} |"
        )
    sides = report.get("sides")
    if sides:  # several sources on a side: the sides' losses, each its sources' weighted mean
        lines += ["", "| side (its sources, averaged by weight) | base model | fine-tuned | change |", "|---|---:|---:|---:|"]
        for role, row in sides.items():
            lines.append(f"| {role} ({', '.join(row['sources'])}) | {_num(row['base'])} | {_num(row['finetuned'])} | "
                         f"{_num(row['change'], signed=True)} |")
    notes = []
    target = (sides or report["loss"]).get("target", {})
    if target.get("change") is not None:
        notes.append(f"Target loss {_num(target['change'], signed=True)} nats per token (lower is better).")
    if report.get("forgetting") is not None:
        f = report["forgetting"]
        notes.append(f"Generic loss {_num(f, signed=True)}: " + ("forgetting." if f > 0 else "no forgetting measured."))
    elif "generic" not in (sides or report["loss"]):
        notes.append("No replay source given: generic loss (forgetting) not measured; pass --replay to measure it.")
    for name, row in report["loss"].items():
        if row.get("sequences") == 0:
            notes.append(f"{name}: the held-out split is shorter than one sequence; hold out more documents (val).")
    down = report.get("downstream")
    if down:
        notes.append("\n" + format_downstream(down))  # a paragraph of its own
    return head + "\n".join(lines) + ("\n\n" + "\n".join(notes) if notes else "") + "\n"


def format_downstream(down: dict[str, Any]) -> str:
    tasks = ", ".join(down.get("tasks", []))
    if down.get("skipped"):
        return f"Downstream tasks ({tasks}) skipped: {down['skipped']}"
    if down.get("error"):
        return f"Downstream tasks ({tasks}) failed: {down['error']}"
    lines = [f"Downstream tasks (lm-evaluation-harness): {tasks}", "",
             "| task | metric | examples | base model | fine-tuned | change |", "|---|---|---:|---:|---:|---:|"]
    results = down.get("results", {})
    examples = down.get("examples", {})
    for task, metrics in results.get("finetuned", {}).items():
        base_metrics = results.get("base", {}).get(task, {})
        for metric, value in metrics.items():
            if metric.endswith(STDERR):
                continue
            base = base_metrics.get(metric)
            change = value - base if value is not None and base is not None else None
            lines.append(f"| {task} | {metric} | {examples.get(task, 'n/a')} | {_with_stderr(base, base_metrics.get(metric + STDERR))} | "
                         f"{_with_stderr(value, metrics.get(metric + STDERR))} | {_num(change, signed=True)} |")
    return "\n".join(lines)


def _with_stderr(value: float | None, stderr: float | None) -> str:
    return _num(value) + (f" ± {stderr:.4f}" if value is not None and stderr is not None else "")


def write_report(out_dir: str | Path, report: dict[str, Any]) -> tuple[Path, Path]:
    out = Path(out_dir)
    write_json(out / REPORT_JSON, report)
    write_text(out / REPORT_MD, format_report(report))
    return out / REPORT_JSON, out / REPORT_MD


def task_manager(tasks: Sequence[str], include: Sequence[str | Path] = (), *, load_data: bool = False):
    """lm-evaluation-harness's ``TaskManager`` that knows every one of ``tasks``; None without the harness.

    ``include`` are folders of task YAML files (the harness's ``include_path``). When they alone
    hold every task asked for, the harness's own task definitions (some 15,000, about 15 s to
    index) are left out; otherwise both are searched, the folders first. A path to a task's YAML
    file is a task too. ``load_data``: also build the tasks, which loads (or downloads and
    caches) their data sets, so that data out of reach fails now rather than after training.
    Raises :class:`ConfigError` for a missing folder, an unknown task or data that cannot be
    loaded, naming where tasks were looked for or what to do.
    """
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        return None
    folders = [Path(p).expanduser() for p in include]
    for folder in folders:
        if not folder.is_dir():
            raise ConfigError(f"eval_include {folder}: no such folder; give the folder that holds your lm-evaluation-harness "
                              f"task YAML files (--eval-include DIR)")
    names = [t for t in tasks if not (t.endswith((".yaml", ".yml")) and Path(t).is_file())]
    if folders:
        local = TaskManager(include_path=[str(f) for f in folders], include_defaults=False)
        if all(t in local.all_subtasks for t in names):  # single tasks: a group or tag may name the harness's own
            return _loaded(local, tasks) if load_data else local
    manager = TaskManager(include_path=[str(f) for f in folders] or None)
    unknown = [t for t in names if t not in manager.all_tasks]
    if unknown:
        raise ConfigError(_unknown_tasks(unknown, manager, folders))
    return _loaded(manager, tasks) if load_data else manager


def _loaded(manager, tasks: Sequence[str]):
    try:
        manager.load(list(tasks))
    except Exception as exc:  # the harness and datasets raise many types (offline, missing file, bad YAML field)
        raise ConfigError(f"eval_tasks: lm-evaluation-harness could not load {', '.join(tasks)}: {_first_line(exc)}."
                          + _hint(exc)) from None
    return manager


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: " + (str(exc).strip().splitlines() or [""])[0][:300]


def _hint(exc: BaseException) -> str:
    """What to do about a task whose data is out of reach."""
    text = f"{type(exc).__name__} {exc}"
    if "Offline" in text or "Connection" in text or "reach" in text:
        return (" Its data set comes from the Hugging Face Hub: run once with the hub reachable (HF_HUB_OFFLINE and "
                "HF_DATASETS_OFFLINE unset) so that it is cached, or give a task over local files with --eval-include DIR.")
    if isinstance(exc, FileNotFoundError):
        return " A task over local files needs absolute paths in data_files (relative ones are read from the working directory)."
    return ""


def _unknown_tasks(unknown: list[str], manager, folders: list[Path]) -> str:
    import difflib

    import lm_eval.tasks

    where = [f"{f} (--eval-include)" for f in folders] + [f"lm-evaluation-harness's own tasks ({Path(lm_eval.tasks.__file__).parent})"]
    text = (f"eval_tasks: no lm-evaluation-harness task named {', '.join(map(repr, unknown))}; looked in "
            + "; ".join(where) + ".")
    for name in unknown:
        close = difflib.get_close_matches(name, manager.all_tasks, n=3)
        if close:
            text += f" Did you mean {' or '.join(close)} (for {name})?"
    defined = {str(Path(e.yaml_path).resolve()) for e in manager.task_index.values() if e.yaml_path is not None}
    silent = [p for f in folders for p in sorted(f.rglob("*.y*ml")) if str(p.resolve()) not in defined]
    if silent:
        text += (" These files define no task the harness could read (a `task:` key is needed, and YAML errors make "
                 "the harness skip a file): " + ", ".join(map(str, silent[:5])) + ("..." if len(silent) > 5 else "") + ".")
    text += (" Give the task's `task:` name, pass the folder holding its YAML with --eval-include DIR, "
             "or list the harness's tasks with `lm-eval ls tasks`.")
    return text


def downstream(
    tasks: Sequence[str],
    *,
    base: Callable[[], tuple[Any, Any]],
    tuned: Callable[[], tuple[Any, Any]],
    limit: int | None = None,
    batch_size: int = 8,
    include: Sequence[str | Path] = (),
    manager: Any = None,
) -> dict[str, Any]:
    """Score ``tasks`` with lm-evaluation-harness on the base and the fine-tuned model.

    ``base`` / ``tuned`` return ``(model, tokenizer)`` when called (loaded only if the harness
    is installed, one at a time). ``include``: folders of the user's task YAML files;
    ``manager``: a :func:`task_manager` already built for these tasks. Returns ``{"tasks",
    "examples": {task: n}, "results": {"base"|"finetuned": {task: {metric: value}}}}`` (a
    metric's standard error under ``<metric>_stderr``), ``{"tasks", "skipped": why}`` without
    the harness, or ``{"tasks", "error"}`` when it fails (e.g. a task's dataset cannot be
    downloaded offline).
    """
    tasks = list(tasks)
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        return {"tasks": tasks, "skipped": LM_EVAL_MISSING}
    results: dict[str, Any] = {}
    examples: dict[str, int] = {}
    for label, load in (("base", base), ("finetuned", tuned)):
        model = lm = None
        try:
            if manager is None:
                manager = task_manager(tasks, include)
            model, tok = load()
            lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size)
            out = lm_eval.simple_evaluate(model=lm, tasks=tasks, limit=limit, task_manager=manager, log_samples=False)
        except ConfigError as exc:
            return {"tasks": tasks, "error": str(exc)}
        except Exception as exc:  # the harness raises many types (missing dataset, offline, bad task name)
            return {"tasks": tasks, "error": f"{label} model: {_first_line(exc)}.{_hint(exc)}"}
        finally:
            del model, lm
            _free_memory()
        results[label] = {task: _scores(metrics) for task, metrics in (out or {}).get("results", {}).items()}
        for task, count in (out or {}).get("n-samples", {}).items():
            examples[task] = int(count["effective"] if isinstance(count, dict) else getattr(count, "effective", count))
    return {"tasks": tasks, "examples": examples, "results": results}


def _scores(metrics: dict[str, Any]) -> dict[str, float | None]:
    """The harness's ``{"acc,none": v, "acc_stderr,none": s, ...}`` as ``{"acc": v, "acc_stderr": s}``.

    A metric under a filter other than ``none`` is named with it: ``strict-match:exact_match``.
    """
    scores: dict[str, float | None] = {}
    for key, value in metrics.items():
        if key in ("sample_len", "name", "alias") or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        metric, _, filt = key.partition(",")
        scores[metric if filt in ("", "none") else f"{filt}:{metric}"] = float(value) if math.isfinite(value) else None
    return scores


def _free_memory() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
