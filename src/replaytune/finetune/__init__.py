"""Practical fine-tuning with replay: a pretrained model, a small target set, a generic set, one flag.

``replaytune finetune --model M --target T --replay G --replay-fraction 0.5`` (or the same
as a YAML file, :class:`FinetuneConfig`) does, in order:

1. checks what can be checked cheaply (model path, tokenizer, chat template, sources), so a
   bad input fails before anything is written;
2. tokenizes target and replay with the *model's* tokenizer into token stores under
   ``OUT/data/`` (``replaytune.data.prepare``: fingerprinted, so an unchanged source is not
   rebuilt on the next run); chat/instruction stores carry loss masks;
3. turns the replay fraction into sequence weights (:func:`plan_replay`) and the target
   epochs into a step count;
4. builds a :class:`~replaytune.config.RunConfig` with one phase from the pretrained model and
   runs the one training loop (``replaytune.train``), full fine-tuning or LoRA;
5. moves the Hugging Face model into place (merged, or the adapter), writes the forgetting
   report (:mod:`replaytune.finetune.forgetting`) and, last, ``OUT/finetune.json``.

The modules, each importing only the ones before it:

* :mod:`~replaytune.finetune.config`: the settings (:class:`FinetuneConfig`,
  :func:`load_config`) and the sources they name (kind detection is the data layer's,
  :func:`replaytune.data.sources.detect_kind`);
* :mod:`~replaytune.finetune.checks`: the model and tokenizer, checked before anything is written;
* :mod:`~replaytune.finetune.plan`: the sources checked in the user's words and the phase spec
  (:func:`~replaytune.finetune.plan.check_sides`); the plan's view (:func:`plan_replay`), which
  the core's ``train/plan.RunPlan`` resolves through :func:`replaytune.schedule.finetune`;
* :mod:`~replaytune.finetune.phase`: the fine-tune as one phase of the loop (its run config, its Trainer);
* :mod:`~replaytune.finetune.search`: ``--replay-fraction auto`` (candidates, the driver, its outputs);
* :mod:`~replaytune.finetune.outputs`: model or adapter, tokenizer, model card;
* :mod:`~replaytune.finetune.forgetting` and :mod:`~replaytune.finetune.evaluate`: held-out loss
  before and after, per source, and lm-eval tasks;
* :mod:`~replaytune.finetune.run`: the sequence of it all (:func:`run_finetune`);
* :mod:`~replaytune.finetune.hf`: the same mixture as a torch dataset for HF Trainer / TRL.

The replay fraction counts loss-bearing tokens
-------------------------------------------
The loop's loss is the mean over every loss-bearing token of the global batch, so a source's
pull on the update is its share of those tokens. A chat sequence whose assistant turns hold
30% of its tokens brings 0.3 L loss tokens; a text sequence brings L. Counting sequences,
rho = 0.5 would give replay text 1 / (1 + 0.3) = 77% of the gradient and the target 23%.
So by default rho is the *token* share: with ``m_i`` loss tokens per sequence of source i
(measured on its store), the sequence weights are::

    w_target ~ (1 - rho) / m_target,   w_generic ~ rho / m_generic   (normalised to sum to 1)

(``replay_unit: sequences`` uses ``m = 1``; ``examples`` uses documents per sequence.)
For text on both sides ``m_target = m_generic = L`` and this is the paper's weighting.

Steps
-----
The target is seen ``epochs`` times whatever rho is: with ``N_t`` target training sequences,
batch B and target weight ``w_t``, ``steps = ceil(N_t * epochs / (B * w_t))``. The target
size in batches, ``N_t / B``, need not be an integer; rounding up to whole steps shows the
target at most one batch's target share more than asked (reported as the realised epochs).
Text only: ``w_t = 1 - rho`` and steps = target_batches * epochs / (1 - rho), as in docs/method.md.

Several sources on a side
-------------------------
``--replay web.jsonl:0.7 --replay chat.jsonl:0.3`` (a list of sources with ``weight`` in a
file): the replay side's rho is split by the weights, the target side's ``1 - rho`` by the
target weights, and each source's sequence weight is ``w_i ~ share_i / m_i`` as above. ``N_t``
and ``w_t`` are then the target side's sums, so the target side is drawn ``epochs`` times in
all. One source on a side is named as the side (``target``, ``generic``); several are
``<side>.<stem>`` (:func:`source_names`), the name of their stores, metrics and report rows.

Output directory
----------------
``data/`` (token stores), ``tokenizer/``, ``run/`` (the loop's run: config.yaml,
metrics.jsonl, record.json, checkpoints while training), ``model/`` (merged or full model),
``adapter/`` (LoRA), ``forgetting.json``/``forgetting.md``, and ``finetune.json``, written
last: a directory without it is not finished (``--resume`` continues it).
"""

from replaytune.data.store import UNITS
from replaytune.finetune.config import (
    DEFAULT_EPOCHS,
    DEFAULT_LR,
    DEFAULT_REPLAY_FRACTION,
    DEFAULT_VAL,
    MARKER,
    SUMMARY,
    FinetuneConfig,
    Source,
    SourceArg,
    detect_kind,
    label,
    load_config,
    resolve_sources,
    source_names,
    split_weight,
)
from replaytune.finetune.plan import ReplayPlan, plan_for, plan_replay, realised_units, sequence_units
from replaytune.finetune.checks import check_model, check_store_tokenizer, model_tokenizer
from replaytune.finetune.phase import FinetuneTrainer, build_run_config
from replaytune.finetune.run import FinetuneResult, prepare_sources, run_finetune
from replaytune.schedule import GENERIC, TARGET

__all__ = [
    "DEFAULT_EPOCHS", "DEFAULT_LR", "DEFAULT_REPLAY_FRACTION", "DEFAULT_VAL", "GENERIC", "MARKER", "SUMMARY", "TARGET",
    "UNITS", "FinetuneConfig", "FinetuneResult", "FinetuneTrainer", "ReplayPlan", "Source", "SourceArg",
    "build_run_config", "check_model", "check_store_tokenizer", "detect_kind", "label", "load_config",
    "model_tokenizer", "plan_for", "plan_replay", "prepare_sources", "realised_units", "resolve_sources", "run_finetune",
    "sequence_units", "source_names", "split_weight",
]
