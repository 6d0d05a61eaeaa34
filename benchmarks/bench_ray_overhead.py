"""Scheduling overhead per run: the Ray executor against the local ones, in one invocation.

A grid of --runs tiny runs (default 41, the demo's number of runs; --steps updates each of a
d32 x 2-layer Llama on synthetic data, seq 32 x batch 8, evaluated once at the end, no prefix
sharing: every run is independent, so the executors' own cost is what differs) is executed by

* ``inline``: one run after another in this process (the default executor, one thread);
* ``processes``: ``--workers 2`` local processes, one thread each;
* ``ray``: a local Ray instance with 2 CPUs, one CPU per run (``--launcher ray``).

For each: wall time of the whole sweep, wall time per run, and the overhead per run: the
slot-seconds (wall x runs at once) not spent inside a run's trainer (the records'
``wall_time_s``), divided by the runs: process start-up and imports, task submission and
result transfer, polling, idle slots at the tail. Ray's own start-up (``ray.init``) is timed
apart, once per sweep. Results of the three must agree: final losses are compared.

Usage: python benchmarks/bench_ray_overhead.py [--runs 41] [--steps 8] [--rounds 1] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

# the local Ray instance listens and connects on 127.0.0.1 only (read when Ray is imported)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def make_stores(root: Path, vocab: int = 64) -> dict[str, Path]:
    from replaytune.data.store import write_store

    rng = np.random.default_rng(0)

    def docs(n, lo, hi):
        return [np.append(rng.integers(lo, hi, size=int(rng.integers(20, 60))), 0) for _ in range(n)]

    out = {}
    for name, lo, hi in (("generic", 1, 32), ("target", 32, vocab)):
        write_store(root / name, docs(300, lo, hi), docs(40, lo, hi), vocab_size=vocab, eos_id=0,
                    fingerprint=f"bench-ray-{name}")
        out[name] = root / name
    return out


def configs(stores: dict[str, Path], runs: int, steps: int):
    from replaytune import config

    out = []
    for i in range(runs):
        out.append(config.validate({
            "name": f"r{i:03d}", "seed": i, "out_dir": "unused",
            "model": {"preset": "tiny", "overrides": {"hidden_size": 32, "intermediate_size": 64,
                                                      "num_hidden_layers": 2, "num_attention_heads": 2}},
            "data": {"sources": {n: {"store": str(p)} for n, p in stores.items()}, "seq_len": 32, "batch_size": 8},
            "phases": [{"name": "mix", "steps": steps, "uniform": {"gamma": 0.3, "target": "target", "generic": "generic"},
                        "lr": {"peak": 1e-3}}],
            "eval": {"interval": 0, "sequences": 8, "batch_size": 8},
            "progress": False,
        }))
    return out


def run(executor_name: str, cfgs, out: Path, ray_tmp: Path | None) -> dict:
    import torch

    from replaytune.study import sweep

    torch.set_num_threads(1)
    tasks = sweep.build_tasks(cfgs, out, share_prefixes=False)
    init_s = None
    if executor_name == "inline":
        kw = {"launcher": sweep.LocalLauncher(progress=False)}
        slots = 1
    elif executor_name == "processes":
        kw = {"workers": 2}
        slots = 2
    else:
        import ray

        from replaytune.study.sweep.ray import RayExecutor

        t = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2, _temp_dir=str(ray_tmp),
                 log_to_driver=False)
        init_s = time.perf_counter() - t
        kw = {"executor": RayExecutor(cpus_per_run=1)}
        slots = 2
    t = time.perf_counter()
    res = sweep.execute(tasks, log=lambda line: None, **kw)
    wall = time.perf_counter() - t
    if executor_name == "ray":
        import ray

        ray.shutdown()
    inside = sum(r["wall_time_s"] for r in res.records)
    n = len(tasks)
    return {"executor": executor_name, "runs": n, "wall_s": wall, "wall_per_run_s": wall / n,
            "trainer_s_per_run": inside / n, "overhead_per_run_s": (wall * slots - inside) / n,
            "ray_init_s": init_s, "finals": [r["final"]["eval"] for r in res.records]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=41)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=1, help="repeat, alternating the order; medians at the end")
    ap.add_argument("--only", default="inline,processes,ray", help="comma-separated executors")
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="rt-bench-", dir="/tmp"))  # short: Ray's socket paths live under it
    try:
        stores = make_stores(root / "stores")
        cfgs = configs(stores, args.runs, args.steps)
        rows = []
        names = args.only.split(",")
        for r in range(args.rounds):
            for name in names if r % 2 == 0 else names[::-1]:  # alternate the order: the machine is shared
                (root / "ray").mkdir(exist_ok=True)
                row = run(name, cfgs, root / f"{name}-{r}", root / "ray")
                row["round"] = r
                rows.append(row)
                extra = f", ray.init {row['ray_init_s']:.1f} s" if row["ray_init_s"] is not None else ""
                print(f"round {r} {name:10s} {row['runs']} runs in {row['wall_s']:6.1f} s: {row['wall_per_run_s']:.2f} "
                      f"s/run, trainer {row['trainer_s_per_run']:.2f} s/run, overhead {row['overhead_per_run_s']:.2f} "
                      f"slot-s/run{extra}", flush=True)
        for name in names:
            mine = [row for row in rows if row["executor"] == name]
            med = {k: statistics.median(row[k] for row in mine) for k in ("wall_per_run_s", "overhead_per_run_s")}
            print(f"median {name:10s} {med['wall_per_run_s']:.2f} s/run, overhead {med['overhead_per_run_s']:.2f} slot-s/run")
        same = all(row["finals"] == rows[0]["finals"] for row in rows)
        print(f"final losses identical across executors: {same}")
        if args.json:
            Path(args.json).write_text(json.dumps({"rows": rows, "identical": same}, indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
