"""A sweep file: a base run config and a grid of dotted keys, expanded into validated runs (pure).

A run's directory is keyed by a hash of its resolved config, so an interrupted sweep resumes.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Mapping, Sequence


from replaytune import config as cfgmod
from replaytune.config import RunConfig
from replaytune.errors import ConfigError


def expand_grid(base: Mapping[str, Any], grid: Mapping[str, Sequence[Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Every combination of ``grid`` values applied to ``base``: [(overrides, config dict)].

    Keys are dotted paths as in ``--set`` (``phases.1.finetune.replay``); the first key
    varies slowest. An empty grid gives the base alone.
    """
    keys = list(grid)
    for k in keys:
        if not isinstance(grid[k], (list, tuple)) or len(grid[k]) == 0:
            raise ConfigError(f"grid.{k}: expected a non-empty list of values")
    out = []
    for values in itertools.product(*(grid[k] for k in keys)):
        chosen = dict(zip(keys, values))
        sets = [f"{k}={json.dumps(v)}" for k, v in chosen.items()]
        out.append((chosen, cfgmod.apply_overrides(dict(base), sets)))
    return out


def run_key(cfg: RunConfig) -> str:
    """Directory name of a run: its name plus a hash of everything but where it is written."""
    data = cfg.model_dump(mode="json")
    data.pop("out_dir", None)
    return f"{cfg.name}-{cfgmod.config_hash(data)[:10]}"


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> tuple[list[RunConfig], Path]:
    """Read a sweep file: ``{base: {...} or path, grid: {key: [values]}, out_dir: DIR}``."""
    path = Path(path)
    spec = cfgmod.read_yaml_mapping(path)
    if "base" not in spec:
        raise ConfigError(f"{path}: a sweep needs 'base' (a run config or its path) and 'grid'")
    base = spec["base"]
    if isinstance(base, str):
        base_path = Path(cfgmod.resolve_path(base, path.parent))
        if not base_path.is_file():
            raise ConfigError(f"{path}: base: {base} not found (a run config file, relative to the sweep file)")
        base = cfgmod.read_yaml_mapping(base_path)
    base = cfgmod.apply_overrides(base, overrides or [])
    out_dir = Path(spec.get("out_dir", f"runs/{path.stem}"))
    configs = []
    for chosen, data in expand_grid(base, spec.get("grid", {}) or {}):
        name = data.get("name", "run") + "".join(f"_{k.split('.')[-1]}={v}" for k, v in chosen.items())
        data["name"] = name
        cfg = cfgmod.validate(data, f"{path} (grid point {chosen})")
        configs.append(cfgmod.resolve_paths(cfg, path.parent))
    return configs, out_dir
