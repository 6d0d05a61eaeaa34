"""Test-wide settings: no network, quiet tokenizers, few threads (2 shared cores).

Environment variables are set before any test imports transformers or torch: without
HF_HUB_OFFLINE a hub lookup hangs 25-50 s before failing (measured on this project's 2-core CI machines).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # torch reads it at import; subprocesses inherit it
os.environ.setdefault("MKL_NUM_THREADS", "1")
# a local Ray instance (tests/train/test_sweep_ray.py) binds and connects on 127.0.0.1 only, not on
# the machine's network address (Ray reads this when imported)
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
