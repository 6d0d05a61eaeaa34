"""Experiment trackers: metrics.jsonl mirrored to TensorBoard, Weights & Biases, MLflow or trackio.

``report_to`` (Transformers' name) lists the trackers; metrics.jsonl is written either way.
Every tracker receives the same scalars under the same names, at the record's ``step``:

* a train line: ``train/loss``, ``train/lr``, ``train/grad_norm`` (the gradient's global norm
  before clipping, at the line's step), ``train/tokens_per_s``, ``train_loss/<source>``
  and ``mix/<source>`` (each source's share of the tokens trained on since the previous
  train line);
* an evaluation: ``eval/<source>`` (held-out loss);

and the resolved run config once: TensorBoard as YAML text, W&B and trackio as the run's
config, MLflow as params with dotted names (``data.seq_len``).

Where each one writes (each respects its own environment variables):

* tensorboard: event files under RUN/tb;
* wandb: project ``$WANDB_PROJECT`` or ``replaytune``, the run's name, files under
  RUN/wandb (or ``$WANDB_DIR``); ``WANDB_MODE=offline`` needs no account;
* mlflow: ``$MLFLOW_TRACKING_URI``, else a SQLite store in RUN/mlflow.db; experiment
  ``$MLFLOW_EXPERIMENT_NAME`` or ``replaytune``, the run's name;
* trackio: its local database (``$TRACKIO_DIR``), project ``replaytune``.

Resume: RUN/trackers.json keeps the W&B and MLflow run ids, and a resumed run continues the
same tracker runs (trackio: the run of the same name). The steps the stopped process logged
after its last checkpoint come again from the resumed one, with the same values:
TensorBoard drops the older copies (a purge step), MLflow and trackio skip the new ones, and
W&B (online) ignores steps below the resumed run's current one; offline, each start is its
own folder under wandb/ with the same run id, for `wandb sync`. A tracker added on resume,
or a branch (``init_from``), first gets the lines metrics.jsonl already holds.

This module imports no tracker package until a tracker is opened.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, get_args

from replaytune.errors import ConfigError
from replaytune.rundir import MLFLOW_DB, TENSORBOARD, TRACKERS

ReportTo = Literal["none", "tensorboard", "wandb", "mlflow", "trackio"]
NAMES: tuple[str, ...] = get_args(ReportTo)
STATE = TRACKERS
PROJECT = "replaytune"


def enabled(names: Sequence[str]) -> list[str]:
    """The trackers to open: ``none`` dropped, each name once, in the given order."""
    out: list[str] = []
    for n in names:
        if n != "none" and n not in out:
            out.append(n)
    return out


def _need(module: str, tracker: str):
    """Import a tracker's package, or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"report_to {tracker} (--report-to {tracker}) needs the {tracker} package, which is not installed: "
            f"pip install 'replaytune[{tracker}]', or drop {tracker} from --report-to"
        ) from None


PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}


def require(names: Sequence[str]) -> None:
    """Every named tracker's package imports, or one ConfigError naming the extra that installs it.

    Called before a run writes anything (the loop, ``finetune``, ``sweep``, ``study``), so a
    missing package refuses the start instead of leaving a half-started run directory.
    """
    for n in enabled(names):
        _need(PACKAGES[n], n)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


class Scalars:
    """Turns metrics records into ``{name: value}`` (the names above); finite values only.

    Keeps the cumulative token counts of the previous train line for the mixture shares.
    """

    def __init__(self, tokens: Mapping[str, int] | None = None):
        self.tokens: dict[str, int] = dict(tokens or {})

    def __call__(self, rec: Mapping[str, Any]) -> dict[str, float]:
        out: dict[str, float | None] = {}
        if rec["kind"] == "train":
            out["train/loss"] = rec.get("loss")
            out["train/lr"] = rec.get("lr")
            out["train/grad_norm"] = rec.get("grad_norm")
            out["train/tokens_per_s"] = rec.get("tokens_per_s")
            for src, v in (rec.get("train_loss") or {}).items():
                out[f"train_loss/{src}"] = v
            tokens = rec.get("tokens") or {}
            delta = {s: n - self.tokens.get(s, 0) for s, n in tokens.items()}
            total = sum(delta.values())
            if total > 0:
                out.update({f"mix/{s}": n / total for s, n in delta.items()})
            self.tokens = dict(tokens)
        elif rec["kind"] == "eval":
            for src, v in (rec.get("eval") or {}).items():
                out[f"eval/{src}"] = v
        return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(v)}


class Tracker:
    """One backend, opened for a run with its resolved config.

    ``resume_step``: the checkpoint's step when the run continues from it, else None.
    ``continued``: the backend's run was reopened and holds the steps up to ``resume_step``
    (else it is new, and the caller logs the earlier lines to it first).
    """

    continued = False

    def __init__(self, run_dir: Path, name: str, config: Mapping[str, Any], state: dict, resume_step: int | None):
        raise NotImplementedError

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        raise NotImplementedError

    def close(self, ok: bool = True) -> None:
        raise NotImplementedError


class TensorBoard(Tracker):
    def __init__(self, run_dir, name, config, state, resume_step):
        _need("tensorboard", "tensorboard")
        import yaml
        from torch.utils.tensorboard import SummaryWriter

        log_dir = run_dir / TENSORBOARD
        earlier = log_dir.is_dir() and any(log_dir.iterdir())
        self.continued = resume_step is not None and earlier
        # a restart writes a purge step: TensorBoard drops what earlier files hold from there on
        purge = (resume_step + 1 if self.continued else 0) if earlier else None
        self.writer = SummaryWriter(str(log_dir), purge_step=purge)
        if not self.continued:
            text = yaml.safe_dump(dict(config), sort_keys=False)
            self.writer.add_text("config", "```yaml\n" + text + "\n```", 0)

    def log(self, step, scalars):
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)

    def close(self, ok=True):
        self.writer.close()


class Wandb(Tracker):
    def __init__(self, run_dir, name, config, state, resume_step):
        wandb = _need("wandb", "wandb")
        kwargs: dict[str, Any] = {"config": dict(config)}
        if not os.environ.get("WANDB_PROJECT"):
            kwargs["project"] = PROJECT
        if not os.environ.get("WANDB_NAME"):
            kwargs["name"] = name
        if not os.environ.get("WANDB_DIR"):
            kwargs["dir"] = str(run_dir)
        run_id = state.get("wandb") if resume_step is not None else None
        if run_id is not None:
            kwargs.update(id=run_id, resume="allow", allow_val_change=True)
            self.continued = True
        self.run = wandb.init(**kwargs)
        state["wandb"] = self.run.id

    def log(self, step, scalars):
        self.run.log(dict(scalars), step=step)

    def close(self, ok=True):
        self.run.finish(exit_code=0 if ok else 1)


class MLflow(Tracker):
    MAX_PARAM = 6000  # characters in a param's value
    BATCH = 100  # params per request

    def __init__(self, run_dir, name, config, state, resume_step):
        _need("mlflow", "mlflow")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        # MLflow's local default is a SQLite file (its file store is refused unless opted into)
        uri = os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///" + str((run_dir / MLFLOW_DB).resolve())
        self.client = client = MlflowClient(tracking_uri=uri)
        run_id = state.get("mlflow") if resume_step is not None else None
        self.logged: dict[str, int] = {}  # metric -> last step already logged (a resumed run)
        if run_id is not None:
            try:
                client.get_run(run_id)
            except Exception:  # not in this store (another tracking URI): a new run
                run_id = None
        if run_id is not None:
            self.continued = True
            client.update_run(run_id, status="RUNNING")
            for key in client.get_run(run_id).data.metrics:
                self.logged[key] = max(m.step for m in client.get_metric_history(run_id, key))
        else:
            run_id = client.create_run(self._experiment(), run_name=name).info.run_id
        self.run_id = state["mlflow"] = run_id
        have = client.get_run(run_id).data.params  # write-once: a resumed run keeps the first values
        params = []
        for key, value in flatten(config).items():
            if key not in have:
                text = value if isinstance(value, str) else json.dumps(value)
                params.append(Param(key, text[: self.MAX_PARAM]))
        for i in range(0, len(params), self.BATCH):
            client.log_batch(run_id, params=params[i : i + self.BATCH])

    def _experiment(self) -> str:
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or PROJECT
        found = self.client.get_experiment_by_name(name)
        if found is None:
            try:
                return self.client.create_experiment(name)
            except Exception:  # created meanwhile by another run (a sweep's workers)
                found = self.client.get_experiment_by_name(name)
                if found is None:
                    raise
        return found.experiment_id

    def log(self, step, scalars):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in scalars.items() if step > self.logged.get(k, -1)]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def close(self, ok=True):
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


class Trackio(Tracker):
    def __init__(self, run_dir, name, config, state, resume_step):
        self.trackio = _need("trackio", "trackio")
        self.run = self.trackio.init(
            project=PROJECT, name=name, config=dict(config), resume="allow" if resume_step is not None else "never"
        )
        self.last = -1  # steps up to here are in the run already (a resumed run)
        if resume_step is not None:
            try:
                from trackio.sqlite_storage import SQLiteStorage

                last = SQLiteStorage.get_max_step_for_run(PROJECT, self.run.name, run_id=self.run.id)
            except Exception:  # not a local project, or another trackio version: trust the checkpoint
                last = resume_step
            self.continued = last is not None
            self.last = -1 if last is None else max(last, resume_step)

    def log(self, step, scalars):
        if step > self.last:
            self.trackio.log(dict(scalars), step=step)

    def close(self, ok=True):
        self.trackio.finish()


BACKENDS: dict[str, type[Tracker]] = {"tensorboard": TensorBoard, "wandb": Wandb, "mlflow": MLflow, "trackio": Trackio}


def open_trackers(
    names: Sequence[str], run_dir: Path, *, name: str, config: Mapping[str, Any], resume_step: int | None = None
) -> list[Tracker]:
    """Open the named trackers for the run in ``run_dir``, each with the resolved config.

    ``resume_step``: continuing from the checkpoint at this step (the trackers' runs are
    reopened from RUN/trackers.json); None: a fresh start (new tracker runs).
    """
    run_dir = Path(run_dir)
    path = run_dir / STATE
    state: dict[str, Any] = {}
    if resume_step is not None and path.is_file():
        state = json.loads(path.read_text())
    opened: list[Tracker] = []
    try:
        for n in enabled(names):
            opened.append(BACKENDS[n](run_dir, name, config, state, resume_step))
        if state:
            from replaytune.fsio import write_json

            write_json(path, state)
    except BaseException:
        for t in opened:
            t.close(ok=False)
        raise
    return opened
