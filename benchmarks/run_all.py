"""Run every benchmark at quick sizes and print one table (``make bench``).

Each benchmark runs as its own subprocess (its own peak memory, no state shared), with sizes
small enough that the whole set takes a few minutes on 2 cores. The numbers are smoke-level:
the sizes behind BENCHMARKS.md are each script's defaults (see its --help). The GPU benchmark
runs only where torch sees a CUDA device; the study benchmark only when a demo output folder
exists (``--demo DIR``, default demo-out).

Usage: python benchmarks/run_all.py [--demo DIR] [--only NAME,...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

QUICK = {
    "mixture": ["bench_mixture.py", "--steps", "100000", "--sample", "2000"],
    "prepare": ["bench_prepare.py", "--mb-speed", "2", "--mb-memory", "5", "--repeats", "1"],
    "loop": ["bench_loop.py", "--steps", "10", "--skip", "2", "--rounds", "2", "--eval-steps", "40"],
    "finetune data": ["bench_finetune_data.py", "--chat-examples", "300", "--target-kb", "50", "--replay-kb", "200",
                      "--steps", "5", "--repeats", "1", "--rounds", "1"],
    "gpu 150m": ["bench_gpu_150m.py", "--steps", "12", "--skip", "4"],
    "study": ["bench_study.py"],
}


def _gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def _summary(out: str, width: int = 110) -> str:
    """The benchmark's last non-empty output line: each script ends with its headline."""
    lines = [ln.strip() for ln in out.splitlines()
             if ln.strip() and not ln.startswith(("WARNING", "Warning")) and not ln.strip().startswith(("{", "}", "[", "]", '"'))]
    text = lines[-1] if lines else ""
    return text if len(text) <= width else text[: width - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", default="demo-out", help="demo output folder for the study benchmark")
    ap.add_argument("--only", default="", help="comma-separated names: " + ", ".join(QUICK))
    args = ap.parse_args(argv)
    chosen = [n.strip() for n in args.only.split(",") if n.strip()] or list(QUICK)
    unknown = [n for n in chosen if n not in QUICK]
    if unknown:
        ap.error(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(QUICK)}")
    rows = []
    for name in chosen:
        cmd = [sys.executable, str(HERE / QUICK[name][0]), *QUICK[name][1:]]
        if name == "gpu 150m" and not _gpu():
            rows.append((name, "-", "skipped", "no CUDA device"))
            continue
        if name == "study":
            if not (Path(args.demo) / "runs" / "sweep.json").is_file():
                rows.append((name, "-", "skipped", f"no demo output at {args.demo} (run `make demo` first)"))
                continue
            cmd.append(args.demo)
        print(f"running {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = f"{time.perf_counter() - t0:.1f}"
        if proc.returncode:
            rows.append((name, seconds, f"failed ({proc.returncode})", _summary(proc.stderr or proc.stdout)))
        else:
            rows.append((name, seconds, "ok", _summary(proc.stdout)))
    print("| benchmark | seconds | status | result (last line of its output) |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 1 if any(r[2].startswith("failed") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
