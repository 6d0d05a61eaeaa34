"""The one training loop: pre-training, fine-tuning and mid-training are configurations of it.

A run is a list of phases on one global step axis (see plan.py). For every update
``s = 0 .. N-1``:

1. at the start of a phase with ``reset_optimizer``: a fresh AdamW (zeroed moments, step
   count 0) - together with the phase's own warmup this is the paper's "fresh optimizer,
   re-warmed LR" of fine-tuning;
2. ``lr = peak * lr_factor(phase_step, phase_steps, ...)``;
3. the global batch from the phase's mixture; this rank takes its contiguous slice;
4. forward/backward over micro-batches of ``data.micro_batch_size`` sequences. The loss of
   the step is the mean over *all target tokens of the global batch*::

       loss = sum over ranks, micro-batches and tokens of CE  /  T_global

   Each micro-batch backpropagates ``sum(CE) * world / T_global`` (DDP/FSDP average
   gradients over ranks, which removes the ``world``), so gradients equal those of one
   batch of B sequences in one process whatever the memory split; a per-micro-batch mean
   would weight tokens unequally when loss masks leave micro-batches with different counts.
   The CE comes from ``loss.forward_losses``: full logits, or the chunked head + loss that
   never builds them (``loss: auto`` picks it for vocabularies >= 32,000; see loss.py);
5. clip the global gradient norm, stop on a non-finite loss or gradient norm (before the
   update: the last checkpoint stays the last good state), AdamW step;
6. per-source training loss from the batch composition (every sequence's summed CE is
   added to its source), metrics, evaluation, checkpoint, then callbacks.

Weight decay (0.1) applies to matrices only (optim.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from replaytune.config import RunConfig, dump_yaml
from replaytune.data.mixture import shard
from replaytune.errors import ConfigError, ReplaytuneError
from replaytune.model import build_model, is_peft, save_model, tokenizer_to_save
from replaytune.train import checkpoint as ck
from replaytune.train.distributed import autocast, full_state_dict, resolve_precision, setup, sync_context, teardown, wrap
from replaytune.data.window import IGNORE, windows
from replaytune.train.evaluation import auto_interval, eval_set, evaluate
from replaytune.train.loss import chunked_head, forward_losses
from replaytune import rundir, trackers
from replaytune.rundir import CONFIG, METRICS, RECORD, RunLock, RunLocked
from replaytune.fsio import write_json, write_text
from replaytune.train.metrics import MetricsLog, Progress, clean, prefix_lines
from replaytune.train.optim import make_optimizer
from replaytune.train.plan import RunPlan, base_signature, chain, open_stores, step_signatures

__all__ = ["Trainer", "TrainingError", "step_signatures", "train"]  # step_signatures: re-exported for sweep.py

FINAL_WINDOW = 10  # record.final.train_loss: token-weighted mean over the last 10 updates


class TrainingError(ReplaytuneError):
    """Training cannot go on (diverged: NaN/inf loss)."""


class Trainer:
    """One run. ``Trainer(cfg).run()`` returns the record (also written to record.json).

    Subclass hooks for other entry points (e.g. a practical fine-tuning command):
    :meth:`build_model` (the raw model before wrapping). Callbacks are callables
    ``f(trainer)`` run after each update's logging, evaluation and checkpoint; they see
    ``trainer.step`` (updates completed), ``trainer.model`` (the raw model),
    ``trainer.optimizer``, ``trainer.plan`` and ``trainer.last`` (the step's losses).
    """

    def __init__(
        self,
        cfg: RunConfig,
        *,
        out_dir: str | Path | None = None,
        resume: bool = False,
        init_from: str | Path | None = None,
        save_at: Iterable[int] = (),
        callbacks: Sequence[Callable[["Trainer"], None]] = (),
        stop_at: int | None = None,
        plan: RunPlan | None = None,
    ):
        if out_dir is not None:
            cfg = cfg.model_copy(update={"out_dir": str(out_dir)})
        if plan is not None and plan.cfg != cfg:
            raise ValueError("Trainer(plan=...): the plan was made for another run config")
        self.given_plan = plan  # a RunPlan of this config made by the caller (finetune describes it first)
        self.cfg = cfg
        self.run_dir = Path(cfg.out_dir)
        self.resume = resume
        self.init_from = Path(init_from) if init_from is not None else None
        self.save_at = sorted(set(cfg.checkpoint.save_at) | {int(s) for s in save_at})
        self.callbacks = list(callbacks)
        # stop after this many updates (evaluated and checkpointed there; --resume continues)
        self.stop_at = None if stop_at is None else int(stop_at)
        self.step = 0
        self.last: dict[str, Any] = {}
        self.last_checkpoint: Path | None = None
        self.metrics: MetricsLog | None = None
        self.progress: Progress | None = None

    # -- hooks ----------------------------------------------------------------------------
    def build_model(self):
        cfg = self.cfg
        return build_model(cfg.model, vocab_size=self.plan.vocab_size, seq_len=cfg.data.seq_len, eos_id=self.plan.eos_id,
                           precision=self.precision, parallel="fsdp" if self.sharded else "ddp",
                           device=self.dist.device, meta=self.sharded and not self.dist.is_main)

    # -- entry ----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.dist = setup(self.cfg.device)
        self.lock = RunLock(self.run_dir)
        ok = False
        try:
            out = self._run()
            ok = True
            return out
        finally:
            if self.progress is not None:
                self.progress.close()
            if self.metrics is not None:
                self.metrics.close(ok=ok)  # a failed run's tracker runs are marked failed
            self.lock.release()
            teardown(self.dist)

    def _verdict(self) -> tuple[str, Any]:
        record = self.run_dir / RECORD
        if self.resume:
            if record.is_file():
                return ("done", json.loads(record.read_text()))  # finished: nothing left to do
            if not rundir.is_resumable(self.run_dir):
                # "resume if possible" (what a sweep executor wants): start from step 0 or the branch point
                start = f"from {self.init_from}" if self.init_from is not None else "from step 0"
                warnings.warn(f"--resume: no checkpoint in {self.run_dir}; starting the run {start}")
        elif record.exists() or (self.run_dir / METRICS).exists() or ck.list_checkpoints(self.run_dir):
            return ("used", f"{self.run_dir} already holds a run; continue it with --resume or choose another --out")
        return ("go", None)

    def _check_run_dir(self) -> dict[str, Any] | None:
        """Rank 0 decides (a finished run, a refusal, or go) and tells the others."""
        verdict: tuple[str, Any] = ("go", None)
        if self.dist.is_main:
            try:
                self.lock.acquire()  # one writer per run directory; a second one is refused here
            except RunLocked as exc:
                verdict = ("used", str(exc))
            else:
                verdict = self._verdict()
        kind, value = self.dist.broadcast(verdict)
        if kind == "used":
            raise ReplaytuneError(value)
        return value if kind == "done" else None

    def _run(self) -> dict[str, Any]:
        done = self._check_run_dir()
        if done is not None:
            return done
        trackers.require(self._report_to())  # a missing package refuses the start before any file is written
        self._build()
        source, branch = self._starting_point()
        self._restore(source)
        self._open_records(source, branch)
        return self._loop()

    def _build(self) -> None:
        """Plan, model, optimizer and seeds (the same on every start, fresh or resumed)."""
        import random

        import torch

        cfg, dist = self.cfg, self.dist
        self.precision = resolve_precision(cfg.dtype, dist.device)
        if self.precision == "bf16" and dist.device == "cpu":
            warnings.warn("dtype bf16 on CPU: bf16 autocast is ~12x slower than fp32 on CPUs without bf16 units")
        if self.given_plan is not None:
            self.stores, self.plan = self.given_plan.stores, self.given_plan
            self.plan.precision = self.precision  # enters the prefix signatures only
        else:
            self.stores = open_stores(cfg)
            self.plan = RunPlan(cfg, self.stores, precision=self.precision)
        plan = self.plan
        late = [s for s in self.save_at if s > plan.total_steps]
        if late:
            raise ReplaytuneError(f"checkpoint.save_at: step {late[0]} is beyond the run's {plan.total_steps} steps")
        self.shard = shard(cfg.data.batch_size, dist.rank, dist.world)  # this rank's part of every batch

        torch.manual_seed(cfg.seed + dist.rank)
        np.random.seed((cfg.seed + dist.rank) % 2**32)
        random.seed(cfg.seed + dist.rank)
        # under FSDP only rank 0 reads or initializes the weights; the others build on the
        # meta device and receive their shards (wrap): no rank but the first holds a full copy
        self.sharded = dist.enabled and cfg.parallel == "fsdp"
        self.model = self.build_model()
        # from_pretrained returns a model in eval mode: dropout (LoRA's included) must be on
        self.model.train()
        self.trainable_only = is_peft(self.model)
        self.wrapped = wrap(self.model, dist, cfg.parallel, self.precision, compile=cfg.compile)
        self.optimizer = make_optimizer(self.model, cfg.optim)
        if self.precision == "fp16" and self.sharded:
            raise ConfigError("dtype fp16 with FSDP is not supported (its gradient scaler differs); use --parallel ddp or bf16")
        # fp16: a dynamic loss scale (torch.amp.GradScaler); its scale restarts at resume
        self.scaler = torch.amp.GradScaler(dist.device.split(":")[0], enabled=self.precision == "fp16")
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.head = chunked_head(self.model, cfg.loss, sharded=self.sharded)  # None: full logits
        self.execution = {"world": dist.world, "micro_batch_size": cfg.data.micro_batch_size, "parallel": cfg.parallel, "compile": cfg.compile,
                          "loss": "full" if self.head is None else "chunked"}

    def _starting_point(self) -> tuple[ck.Checkpoint | None, bool]:
        """(checkpoint to start from, whether it is another run's: a branch)."""
        source = None
        if self.resume:
            if self.dist.is_main:
                ck.clean_temporaries(self.run_dir)
            self.dist.barrier()
            source = ck.latest_checkpoint(self.run_dir)
        branch = source is None and self.init_from is not None
        if branch:
            source = ck.open_checkpoint(self.init_from)
        return source, branch

    def _restore(self, source: ck.Checkpoint | None) -> None:
        """Weights, optimizer, step, running sums and timers from ``source`` (or a fresh start)."""
        plan = self.plan
        self.acc = self._empty_acc()
        self.grad_norm: float | None = None  # of the latest update, before clipping
        self.window: deque = deque(maxlen=FINAL_WINDOW)
        self.last_eval: dict[str, float | None] | None = None
        self._elapsed0, self.train_time = 0.0, 0.0
        if source is None:
            self.sig, self.entries = base_signature(plan.base()), []
            return
        self.sig, self.entries = ck.check_compatible(source, plan)
        for w in ck.execution_warnings(source, self.execution):
            warnings.warn(w)
        ck.restore_checkpoint(source, model=self.model, optimizer=self.optimizer, dist=self.dist,
                              parallel=self.cfg.parallel, trainable_only=self.trainable_only)
        st = source.state
        self.step = source.step
        # per-source sums are positional: map them from the checkpoint's sources to ours by
        # name (a branch may have other sources, e.g. another target; the shared steps drew
        # only from sources both runs have, so what is missing here is zero)
        order = self._from_sources(st.get("sources", list(plan.sources)))
        self.acc = {**st["acc"], "src_sum": order(st["acc"]["src_sum"]), "src_tok": order(st["acc"]["src_tok"])}
        self.window.extend([order(sums), order(toks)] for sums, toks in st["window"])
        # a parent run's last evaluation counts only if it scored the same sequences
        self.last_eval = st["last_eval"] if st.get("eval_signature") == self._eval_signature() else None
        self._elapsed0, self.train_time = st["elapsed_s"], st["train_time_s"]
        self.last_checkpoint = source.path

    def _report_to(self) -> list[str]:
        return [*self.cfg.report_to, *(["tensorboard"] if self.cfg.tensorboard else [])]

    def _open_records(self, source: ck.Checkpoint | None, branch: bool) -> None:
        """config.yaml and metrics.jsonl: fresh, cut back to the checkpoint, or a branch's prefix."""
        dist = self.dist
        text = dump_yaml(self.cfg)
        self.metrics = MetricsLog(self.run_dir, enabled=dist.is_main, report_to=self._report_to(), run_name=self.cfg.name,
                                  config=self.cfg.model_dump(mode="json", exclude_none=True))
        if dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text(self.run_dir / CONFIG, text)
            if source is not None and not branch:
                for w in self.metrics.open(truncate_to=source.state["metrics_offset"], resume_step=source.step):
                    warnings.warn(w)
            elif branch:
                prefix = prefix_lines(source.run_dir / METRICS, source.state["metrics_offset"], self._relabel(source))
                self.metrics.open(prefix=prefix)
            else:
                self.metrics.open()
        dist.barrier()

    def _loop(self) -> dict[str, Any]:
        """Updates from the current step to the end, with logging, evaluation and checkpoints."""
        cfg, plan = self.cfg, self.plan
        self.eval_ids = eval_set(self.stores, cfg.data.seq_len, cfg.eval.sequences)
        for name in set(cfg.eval.skip) & set(self.eval_ids):  # eval.skip: the whole source
            self.eval_ids[name] = self.eval_ids[name][:0]
        for name, ids in self.eval_ids.items():
            if cfg.eval.sequences and len(ids) == 0 and self.dist.is_main and name not in cfg.eval.skip:
                warnings.warn(f"source '{name}': its held-out split has {self.stores[name].val.num_tokens} tokens, fewer "
                              f"than one sequence of {cfg.data.seq_len} + 1, so no held-out loss is recorded for it; "
                              f"hold out more (--val-fraction / --val-docs) or lower seq_len")
        n_eval = sum(len(v) for v in self.eval_ids.values())
        interval = cfg.eval.interval if cfg.eval.interval is not None else auto_interval(plan.total_steps, cfg.data.batch_size, n_eval)
        self.eval_interval = interval
        eval_steps = set(plan.phase_ends()) | (set(plan.stage_switches()) if cfg.eval.at_stage_switch else set())
        eval_steps |= {p.start + k for p in plan.phases for k in cfg.phases[p.index].eval_at if 0 < k <= p.end - p.start}
        end = plan.total_steps if self.stop_at is None else min(self.stop_at, plan.total_steps)
        ends = set(plan.phase_ends()) | {end} if cfg.checkpoint.at_end else {end} - {plan.total_steps}
        ckpt_steps = ends | set(self.save_at)
        eval_steps.add(end)

        self._t0 = time.perf_counter()
        self.progress = Progress(plan.total_steps, self.step, enabled=self.dist.is_main and cfg.progress, desc=cfg.name)
        if self.step == 0 and cfg.eval.at_start:
            self._evaluate(0)
        while self.step < end:
            s = self.step
            stats, lr = self._update(s)
            self.step = done_steps = s + 1
            self._account(stats, lr)
            phase_end = done_steps in plan.phase_ends()
            if done_steps % cfg.log_interval == 0 or phase_end:
                self._log_train(lr)
            phase, phase_step = plan.position(done_steps)
            dense = cfg.phases[phase.index].eval_interval  # phase-relative override
            periodic = phase_step % dense == 0 if dense else bool(interval) and done_steps % interval == 0
            if done_steps in eval_steps or periodic:
                self._evaluate(done_steps)
            every = cfg.checkpoint.interval
            if done_steps in ckpt_steps or (every and done_steps % every == 0):
                self._save(done_steps)
            for callback in self.callbacks:
                callback(self)
        self.progress.close()
        if self.last_eval is None:
            self._evaluate(self.step)
        if self.step < plan.total_steps:  # stopped early (stop_at): no record, the run is not finished
            return {"name": cfg.name, "steps": self.step, "stopped_at": self.step, "total_steps": plan.total_steps,
                    "final": {"eval": dict(self.last_eval or {})}}
        return self._finish()

    # -- one update -------------------------------------------------------------------------
    def _load(self, src: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Inputs, targets and (block document attention) position ids of this rank's sequences."""
        L = self.cfg.data.seq_len
        eos = self.plan.eos_id if self.plan.block else None
        x = np.empty((len(ids), L), dtype=np.int64)
        y = np.empty((len(ids), L), dtype=np.int64)
        pos = np.empty((len(ids), L), dtype=np.int64) if eos is not None else None
        for j in np.unique(src):
            sel = src == j
            name = self.plan.sources[j]
            w = windows(self.stores[name].train, self.plan.train_ids(name, ids[sel]), L, eos=eos)
            x[sel], y[sel] = w.inputs, w.targets
            if pos is not None:
                pos[sel] = w.positions
        return x, y, pos

    def _update(self, s: int):
        import torch

        cfg, dist, plan = self.cfg, self.dist, self.plan
        phase, ps = plan.phase_at(s)
        if plan.reset_at(s):
            self.optimizer = make_optimizer(self.model, cfg.optim)
        lr = phase.lr_at(ps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch, src = plan.global_batch(s)
        entry = plan.step_entry(s, batch, src)
        self.entries.append(entry)
        self.sig = chain(self.sig, entry)
        t0 = time.perf_counter()
        sl = self.shard
        x, y, pos = self._load(src[sl], batch.ids[sl])
        dev = dist.device
        xt, yt = torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)
        pt = None if pos is None else torch.from_numpy(pos).to(dev)
        src_t = torch.from_numpy(src[sl]).to(dev)
        tok_seq = (yt != IGNORE).sum(dim=1)
        if plan.block or any(st.has_loss_mask for st in self.stores.values()):
            # kept on the device (no host sync): world / max(T_global, 1) in fp64, used in fp32 as before
            t_global = dist.all_reduce_sum(tok_seq.sum().double().reshape(1))
            scale = (dist.world / t_global.clamp(min=1.0)).float().reshape(())
        else:
            scale = dist.world / max(float(cfg.data.batch_size * cfg.data.seq_len), 1.0)
        n = len(x)
        micro = cfg.data.micro_batch_size or n
        seq_loss = torch.zeros(n, dtype=torch.float32, device=dev)
        for lo in range(0, n, micro):
            hi = min(lo + micro, n)
            with sync_context(self.wrapped, dist, cfg.parallel, hi == n):
                with autocast(dev, self.precision):
                    total, per_seq = forward_losses(self.wrapped, xt[lo:hi], yt[lo:hi], head=self.head,
                                                    position_ids=None if pt is None else pt[lo:hi])
                self.scaler.scale(total * scale).backward()
            seq_loss[lo:hi] = per_seq
        k = len(plan.sources)
        stats = torch.zeros(2 * k, dtype=torch.float64, device=dev)
        stats[:k].index_add_(0, src_t, seq_loss.double())
        stats[k:].index_add_(0, src_t, tok_seq.double())
        dist.all_reduce_sum(stats)
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
        self.scaler.unscale_(self.optimizer)  # a no-op unless fp16
        norm = torch.nn.utils.clip_grad_norm_(self.params, clip)
        norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        stats = stats.cpu().numpy()
        loss = float(stats[:k].sum() / max(stats[k:].sum(), 1.0))
        if not (math.isfinite(loss) and (math.isfinite(norm) or self.scaler.is_enabled())):
            self._diverged(s, loss, norm, lr)  # fp16: an overflowing step is skipped by the scaler instead
        self.grad_norm = norm  # before clipping, as Transformers logs it (metrics' train lines)
        self.scaler.step(self.optimizer)  # optimizer.step() unless fp16
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.train_time += time.perf_counter() - t0
        self.acc["time"] += time.perf_counter() - t0
        return stats, lr

    def _diverged(self, s: int, loss: float, norm: float, lr: float):
        phase, ps = self.plan.phase_at(s)
        what = f"loss is {loss}" if not math.isfinite(loss) else f"gradient norm is {norm}"
        if self.last_checkpoint:
            last = f"the last good checkpoint is {self.last_checkpoint} (--resume continues from it)"
        else:
            last = "no checkpoint was saved yet, so rerun from the start"
        raise TrainingError(
            f"training diverged at update {s + 1} (phase '{phase.name}', phase step {ps + 1}, lr {lr:.3g}): {what}; "
            f"the update was not applied; lower {self.lr_setting(phase.index)} or check the data; {last}"
        )

    def lr_setting(self, phase_index: int) -> str:
        """How the user sets a phase's peak LR (the finetune command names its own flag)."""
        return f"phases.{phase_index}.lr.peak"

    # -- bookkeeping ----------------------------------------------------------------------
    def _empty_acc(self) -> dict[str, Any]:
        k = len(self.cfg.data.sources)
        return {"src_sum": [0.0] * k, "src_tok": [0.0] * k, "tokens": 0, "time": 0.0}

    def _account(self, stats: np.ndarray, lr: float) -> None:
        k = len(self.plan.sources)
        sums, toks = [float(v) for v in stats[:k]], [float(v) for v in stats[k:]]
        acc = self.acc
        acc["src_sum"] = [a + b for a, b in zip(acc["src_sum"], sums)]
        acc["src_tok"] = [a + b for a, b in zip(acc["src_tok"], toks)]
        acc["tokens"] += self.cfg.data.batch_size * self.cfg.data.seq_len
        self.window.append([sums, toks])
        loss = sum(sums) / max(sum(toks), 1.0)
        self.last = {"loss": loss, "lr": lr, "train_loss": self._per_source(sums, toks)}
        rate = acc["tokens"] / acc["time"] if acc["time"] > 0 else 0.0
        self.progress.update(loss, rate)

    def _per_source(self, sums: Sequence[float], toks: Sequence[float]) -> dict[str, float | None]:
        if not self.cfg.eval.train_loss:
            return {name: None for name in self.plan.sources}
        return {name: (clean(s / t) if t > 0 else None) for name, s, t in zip(self.plan.sources, sums, toks)}

    def elapsed(self) -> float:
        return self._elapsed0 + (time.perf_counter() - self._t0)

    def _log_train(self, lr: float) -> None:
        acc, plan, s = self.acc, self.plan, self.step
        phase, ps = plan.position(s)
        total_tok = sum(acc["src_tok"])
        self.metrics.write(
            {
                "kind": "train",
                "step": s,
                "phase": phase.name,
                "phase_step": ps,
                "lr": lr,
                "loss": clean(sum(acc["src_sum"]) / total_tok) if total_tok > 0 else None,
                "grad_norm": clean(self.grad_norm),  # of the line's last update
                "train_loss": self._per_source(acc["src_sum"], acc["src_tok"]),
                "tokens": plan.tokens_seen(s),
                "epochs": plan.epochs_seen(s),
                "tokens_per_s": acc["tokens"] / acc["time"] if acc["time"] > 0 else 0.0,
                "elapsed_s": self.elapsed(),
            }
        )
        self.acc = self._empty_acc()

    def _evaluate(self, s: int) -> None:
        res = evaluate(
            self.wrapped if self.sharded else self.model,
            self.stores,
            self.eval_ids,
            seq_len=self.cfg.data.seq_len,
            # a micro-batch that fits training (activations kept for backward) fits inference
            batch_size=min(self.cfg.eval.batch_size, self.cfg.data.micro_batch_size or self.cfg.eval.batch_size),
            dist=self.dist,
            precision=self.precision,
            sharded=self.sharded,
            eos=self.plan.eos_id if self.plan.block else None,
            loss=self.cfg.loss,
            split=self.cfg.eval.split,
            test_only={k.partition("/")[0] for k in self.cfg.eval.skip if k.endswith("/val")},
        )
        self.last_eval = {k: clean(v) for k, v in res.items()}
        phase, ps = self.plan.position(s)
        self.metrics.write(
            {"kind": "eval", "step": s, "phase": phase.name, "phase_step": ps, "eval": self.last_eval, "epochs": self.plan.epochs_seen(s)}
        )
        if self.progress is not None:
            self.progress.write(f"step {s}: eval " + ", ".join(f"{k} {v:.4f}" for k, v in self.last_eval.items() if v is not None))

    def _eval_signature(self) -> str:
        blob = {"sequences": self.cfg.eval.sequences, "seq_len": self.cfg.data.seq_len, "data": self.plan.data_fingerprints(),
                **({"split": True} if self.cfg.eval.split else {}),
                **({"skip": sorted(self.cfg.eval.skip)} if self.cfg.eval.skip else {})}
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]

    def _from_sources(self, theirs: Sequence[str]):
        """A function mapping a list ordered by ``theirs`` onto this run's source order (0 where absent)."""
        where = {name: i for i, name in enumerate(theirs)}

        def order(values: Sequence[float]) -> list[float]:
            return [values[where[n]] if n in where else 0.0 for n in self.plan.sources]

        return order

    def _relabel(self, source: ck.Checkpoint):
        """Relabel a parent run's lines with this run's phases and sources; drop evals of another eval set."""
        same_eval = source.state.get("eval_signature") == self._eval_signature()
        zero = {"tokens": 0, "epochs": 0.0, "train_loss": None}

        def rename(rec: dict[str, Any]) -> dict[str, Any] | None:
            if rec.get("kind") == "eval" and not same_eval:
                return None
            phase, ps = self.plan.position(int(rec["step"]))
            out = {**rec, "phase": phase.name, "phase_step": ps}
            for key, empty in zero.items():  # sources of this run only, as in its own lines
                if isinstance(rec.get(key), dict):
                    out[key] = {n: rec[key].get(n, empty) for n in self.plan.sources}
            return out

        return rename

    def _save(self, s: int) -> None:
        state = {
            "name": self.cfg.name,
            "prefix": self.sig,
            "base": self.plan.base(),
            "config_fingerprint": self.cfg.fingerprint(),
            "data": self.plan.data_fingerprints(),
            "phases": [p.mixture.fingerprint() for p in self.plan.phases],
            "metrics_offset": self.metrics.offset,
            "sources": list(self.plan.sources),
            "acc": self.acc,
            "window": list(self.window),
            "last_eval": self.last_eval,
            "elapsed_s": self.elapsed(),
            "train_time_s": self.train_time,
            "pinned": s in self.save_at,
            "execution": self.execution,
            "eval_signature": self._eval_signature(),
        }
        self.last_checkpoint = ck.save_checkpoint(
            self.run_dir,
            s,
            model=self.wrapped if self.sharded else self.model,
            optimizer=self.optimizer,
            dist=self.dist,
            parallel=self.cfg.parallel,
            trainable_only=self.trainable_only,
            state=state,
            history=ck.history_of(self.entries),
            keep=self.cfg.checkpoint.keep,
        )

    # -- end of run -------------------------------------------------------------------------
    def _tokenizer(self):
        cfg = self.cfg
        candidates = [cfg.model.tokenizer, next(iter(self.stores.values())).tokenizer_path, cfg.model.pretrained]
        for path in candidates:
            if path and Path(path).expanduser().exists():
                tok = tokenizer_to_save(path)
                if tok is not None:
                    return tok
        return None

    def _finish(self) -> dict[str, Any]:
        cfg, plan, dist = self.cfg, self.plan, self.dist
        if cfg.checkpoint.final_model:
            sd = full_state_dict(self.wrapped, dist, cfg.parallel) if self.sharded else None
            if dist.is_main:
                save_model(self.model, self.run_dir / "model", tokenizer=self._tokenizer(), state_dict=sd)
        sums = [sum(w[0][j] for w in self.window) for j in range(len(plan.sources))]
        toks = [sum(w[1][j] for w in self.window) for j in range(len(plan.sources))]
        tokens = plan.tokens_seen(plan.total_steps)
        record = {
            "name": cfg.name,
            "config": cfg.model_dump(mode="json"),
            "fingerprints": {
                "config": cfg.fingerprint(),
                "data": plan.data_fingerprints(),
                "phases": [p.mixture.fingerprint() for p in plan.phases],
            },
            "phases": [
                {"name": p.name, "start_step": p.start, "steps": p.steps, "schedule": p.description, "lr": p.lr.model_dump(mode="json")}
                for p in plan.phases
            ],
            "final": {"eval": self.last_eval, "train_loss": self._per_source(sums, toks)},
            "tokens": tokens,
            "epochs": plan.epochs_seen(plan.total_steps),
            "steps": plan.total_steps,
            "wall_time_s": self.elapsed(),
            "train_time_s": self.train_time,  # inside updates only: wall - train = evaluation, checkpoints, start-up
            "tokens_per_s": plan.total_steps * cfg.data.batch_size * cfg.data.seq_len / self.train_time if self.train_time > 0 else 0.0,
        }
        if dist.is_main:
            write_json(self.run_dir / RECORD, record)  # last: marks the run finished
        dist.barrier()
        return record


def train(
    cfg: RunConfig,
    *,
    resume: bool = False,
    init_from: str | Path | None = None,
    save_at: Iterable[int] = (),
    out_dir: str | Path | None = None,
    callbacks: Sequence[Callable[[Trainer], None]] = (),
    progress: bool | None = None,
    stop_at: int | None = None,
) -> dict[str, Any]:
    """Train one run and return its record (the content of ``out_dir/record.json``).

    Args:
        cfg: the validated run config.
        resume: continue from the newest checkpoint in ``out_dir``; a finished run just
            returns its record, a run without checkpoints (or no ``out_dir`` yet) starts
            from step 0, with a warning.
        init_from: a checkpoint folder of *another* run to branch from; refused unless the
            two runs' prefix fingerprints agree at its step (see plan.step_signatures).
        save_at: extra steps to checkpoint and keep (added to ``checkpoint.save_at``).
        out_dir: overrides ``cfg.out_dir``.
        callbacks: ``f(trainer)`` after every update.
        progress: overrides ``cfg.progress`` (the progress bar).
        stop_at: stop after this many updates, evaluated and checkpointed there, and return
            ``{"stopped_at", "final": {"eval"}}`` without finishing the run (``resume`` goes on).
    """
    if progress is not None:
        cfg = cfg.model_copy(update={"progress": bool(progress)})
    return Trainer(cfg, out_dir=out_dir, resume=resume, init_from=init_from, save_at=save_at, callbacks=callbacks,
                   stop_at=stop_at).run()
