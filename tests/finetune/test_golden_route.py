"""The route from fine-tuning flags to batches, pinned by a golden file recorded before a refactor.

Each case runs ``run_finetune(prepare_only=True)`` on the tiny fixtures (tokenize, plan, build
the run config), opens the run config's :class:`~replaytune.train.plan.RunPlan` and records
its mixture's fingerprint, step count and the first 20 global batches (source name and id of
every sequence, in order). Any change of route that moves a single sequence fails here.

Record (only when the route is meant to change what it draws):
``REPLAYTUNE_RECORD_GOLDEN=1 pytest tests/finetune/test_golden_route.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from .conftest import base_values

GOLDEN = Path(__file__).parent / "golden" / "finetune_batches.json"
RECORD = os.environ.get("REPLAYTUNE_RECORD_GOLDEN") == "1"


def _cases(assets):
    text = {"model": str(assets.model)}
    chat = {"model": str(assets.chat_model), "seq_len": 64, "target": {"path": str(assets.chat), "val": 6}}
    several = {
        "model": str(assets.chat_model), "seq_len": 64,
        "target": [{"path": str(assets.target), "weight": 2, "val": 6}, {"path": str(assets.instruction), "val": 6}],
        "replay": [{"path": str(assets.generic), "weight": 0.7, "val": 10}, {"path": str(assets.chat), "weight": 0.3, "val": 6}],
    }
    cases = {}
    for rho in (0.0, 0.5, 0.875):
        for unit in ("tokens", "sequences", "examples"):
            cases[f"text-{unit}-rho{rho}"] = {**text, "replay_unit": unit, "replay_fraction": rho}
            cases[f"chat-{unit}-rho{rho}"] = {**chat, "replay_unit": unit, "replay_fraction": rho}
        cases[f"several-tokens-rho{rho}"] = {**several, "replay_unit": "tokens", "replay_fraction": rho}
    return cases


def _record(assets, tmp_path, name, overrides) -> dict:
    from replaytune.finetune import load_config, run_finetune
    from replaytune.train.plan import RunPlan, open_stores

    out = tmp_path / name
    cfg = load_config(None, base_values(assets, out, **overrides))
    run_cfg = run_finetune(cfg, prepare_only=True, log=lambda text: None).run_config
    plan = RunPlan(run_cfg, open_stores(run_cfg))
    mixture = plan.phases[0].mixture
    batches = []
    for step in range(min(20, mixture.steps)):
        b = mixture.global_batch(step)
        batches.append([[mixture.sources[i], int(j)] for i, j in zip(b.source_index.tolist(), b.ids.tolist())])
    return {
        "fingerprint": mixture.fingerprint(),
        "steps": mixture.steps,
        "weights": {k: round(v, 12) for k, v in plan.phases[0].schedule.stages[0].weights.items()},
        "batches": hashlib.sha256(json.dumps(batches).encode()).hexdigest()[:16],
    }


def test_route_draws_the_recorded_batches(assets, tmp_path):
    got = {name: _record(assets, tmp_path, name, o) for name, o in _cases(assets).items()}
    if RECORD:
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    want = json.loads(GOLDEN.read_text())
    assert set(got) == set(want)
    for name in want:
        assert got[name] == want[name], name


def test_hf_dataset_draws_the_finetune_batches(assets, tmp_path):
    """``ReplayDataset.from_stores`` at the same settings is the same mixture as the fine-tune's run."""
    from replaytune.data.store import TokenStore
    from replaytune.finetune import load_config, run_finetune
    from replaytune.finetune.hf import ReplayDataset

    out = tmp_path / "hf"
    cfg = load_config(None, base_values(assets, out, model=str(assets.chat_model), seq_len=64,
                                         target={"path": str(assets.chat), "val": 6}, replay_fraction=0.5))
    run_cfg = run_finetune(cfg, prepare_only=True, log=lambda text: None).run_config
    from replaytune.train.plan import RunPlan, open_stores

    want = RunPlan(run_cfg, open_stores(run_cfg)).phases[0].mixture
    ds = ReplayDataset.from_stores(TokenStore(out / "data" / "target"), TokenStore(out / "data" / "generic"),
                                   replay_fraction=0.5, epochs=cfg.epochs or 1, seq_len=64, batch_size=4, seed=cfg.seed)
    assert ds.mixture.fingerprint() == want.fingerprint()


@pytest.mark.parametrize("rho", [0.0, 0.5])
def test_run_config_states_its_replay_fraction(assets, tmp_path, rho):
    """The fine-tune's run config carries the phase spec (rho, unit, epochs, sides), not derived stages."""
    from replaytune.config import dump_yaml
    from replaytune.finetune import load_config, run_finetune

    cfg = load_config(None, base_values(assets, tmp_path / "out", replay_fraction=rho))
    run_cfg = run_finetune(cfg, prepare_only=True, log=lambda text: None).run_config
    phase = run_cfg.phases[0]
    assert phase.stages is None and phase.steps is None
    assert (phase.finetune.replay, phase.finetune.unit, phase.finetune.target, phase.finetune.generic) == (rho, "tokens", "target", "generic")
    assert f"replay: {rho}" in dump_yaml(run_cfg)
