"""How fast the data layer computes scheduled batches (the ids for every step).

Target (issue: foundation): >= 10M tokens/s per process, so the data layer never limits a
GPU trainer, on a 1M-step schedule. Tokens per step = batch_size x seq_len; computing a
step means producing the (source, sequence id) list of its global batch, which is what the
trainer needs before it gathers tokens from the memory-mapped stores.

Usage: python benchmarks/bench_mixture.py [--steps 1000000] [--batch 16] [--seq-len 128] [--sample 20000]
Building the count table covers all steps; ids are computed for `--sample` steps spread
over the run (every step costs the same), and the rate is extrapolated from them.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from replaytune import ramp as ramps
from replaytune import schedule as sched
from replaytune.data.mixture import Mixture


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--sample", type=int, default=20_000)
    args = ap.parse_args()
    tokens_per_step = args.batch * args.seq_len
    cases = {
        # two-stage mid-training, weights with fractional w*B (the slow path of the count table)
        "two-stage rho=0.75 alpha=0.25": sched.two_stage(args.steps, 0.03, 0.75, 0.25).schedule,
        "uniform gamma=1/3 (3 sources)": Schedule3(),
        "finetune rho=0.5 (integer counts)": sched.finetune(1, args.steps, 0.5).schedule,
        # a continuous ramp: the target share moves every step (cumulative rounding, two sources)
        "ramp stepped:3:0.9:0.5 gamma=0.03": ramps.midtrain_ramp(args.steps, 0.03, ramps.shape_points("stepped:3:0.9:0.5")).schedule,
        "ramp linear:0.75:0.25 (3 sources)": Ramp3(args.steps),
    }
    for name, schedule in cases.items():
        sizes = {src: 50_000 if src != "target" else args.batch * 4 for src in schedule.sources}
        t0 = time.perf_counter()
        m = Mixture(schedule, sizes, args.batch, args.steps, seed=0)
        build = time.perf_counter() - t0
        steps = np.linspace(0, args.steps - 1, args.sample).astype(int)
        t0 = time.perf_counter()
        for s in steps:
            m.batch(int(s))
        per_step = (time.perf_counter() - t0) / len(steps)
        total = build + per_step * args.steps
        rate = args.steps * tokens_per_step / total
        print(
            f"{name:36s} table {build:6.2f} s  ids {per_step * 1e6:6.1f} us/step  "
            f"whole run {total:7.1f} s  -> {rate / 1e6:7.1f} M tokens/s"
        )


def Schedule3():
    return sched.Schedule([sched.Stage(0, {"target": 1, "generic": 1, "code": 1})])


def Ramp3(steps):
    pts = ((0.0, (0.25, 0.5, 0.25)), (1.0, (0.75, 0.125, 0.125)))
    return ramps.Ramp(pts, steps, ("target", "generic", "code"))


if __name__ == "__main__":
    main()
