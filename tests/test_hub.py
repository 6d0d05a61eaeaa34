"""An unreachable hub fails within 5 s in one line naming what the user gave (no minute of retries).

Every request goes to 127.0.0.1: HF_ENDPOINT points at a closed port, or at a socket that
accepts connections and never answers. The runs are subprocesses so that huggingface_hub,
transformers and datasets read these settings when they are imported.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, sys, time
# imported before the clock starts (torch alone takes seconds on a busy machine)
import datasets, torch, transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
import huggingface_hub.constants
import replaytune.data.chat, replaytune.finetune.run, replaytune.finetune.forgetting, replaytune.hub, replaytune.train.distributed
from replaytune.errors import ReplaytuneError
from replaytune.finetune import load_config, run_finetune
results = []
for endpoint, values in json.loads(sys.argv[1]):
    huggingface_hub.constants.ENDPOINT = endpoint  # every endpoint is on 127.0.0.1 (HF_ENDPOINT too)
    replaytune.hub._answers.clear()  # a probe per case
    cfg = load_config(None, values)
    t0 = time.perf_counter()
    try:
        run_finetune(cfg, log=lambda s: None)
        err = None
    except ReplaytuneError as exc:
        err = str(exc)
    results.append({"seconds": time.perf_counter() - t0, "error": err})
print(json.dumps(results))
"""


def _env(endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env.update(HF_ENDPOINT=endpoint, PYTHONPATH=os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    return env


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def silent_endpoint():
    """A socket that takes connections (the kernel's backlog) and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield f"http://127.0.0.1:{s.getsockname()[1]}"
    s.close()


def test_unreachable_hub_fails_fast_naming_the_model_or_dataset(tmp_path, silent_endpoint, tiny_model):
    target = tmp_path / "eu.txt"
    target.write_text("Kaixo mundua.\n")
    base = {"model": "org/some-model", "target": {"path": str(target)}, "output": str(tmp_path / "out"),
            "device": "cpu", "progress": False}
    refused = f"http://127.0.0.1:{_closed_port()}"
    cases = [
        (refused, base),  # connection refused
        (silent_endpoint, base),  # connects, never answers
        (refused, {**base, "model": str(tiny_model), "target": {"path": "org/some-dataset"}}),
    ]
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(cases)], env=_env(refused), capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    model_refused, model_silent, dataset = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not (tmp_path / "out").exists()

    assert model_refused["seconds"] < 5
    assert model_refused["error"].startswith(f"model org/some-model: not a local path, and the Hugging Face hub at "
                                             f"{refused} cannot be reached (")
    assert model_refused["error"].endswith("give a local path, or set HF_HUB_OFFLINE=1 to use the copy in the hub cache")
    assert "\n" not in model_refused["error"]

    assert 2 < model_silent["seconds"] < 5  # the probe's 3 s bound, not the libraries' retries
    assert model_silent["error"].startswith(f"model org/some-model: not a local path, and the Hugging Face hub at "
                                            f"{silent_endpoint} cannot be reached (")

    assert dataset["seconds"] < 5
    assert dataset["error"].startswith(f"target source: dataset org/some-dataset: not a local path, and the Hugging "
                                       f"Face hub at {refused} cannot be reached")


def test_the_cli_says_it_in_one_line(tmp_path):
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    (tmp_path / "eu.txt").write_text("Kaixo mundua.\n")
    proc = subprocess.run([sys.executable, "-m", "replaytune.cli", "finetune", "--model", "org/some-model", "--target",
                           str(tmp_path / "eu.txt"), "--output", str(tmp_path / "out")],
                          env=_env(endpoint), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("replaytune finetune: error: model org/some-model: ")
    assert not (tmp_path / "out").exists()


@pytest.fixture
def tiny_model(tmp_path):
    """A local model folder (config.json, a byte-level tokenizer): the model is local, the dataset is not."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from replaytune.data.tokenizer import load_tokenizer, train_tokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("kaixo mundua etxe mendi ur itsaso\n" * 20)
    train_tokenizer([str(corpus)], 300, tmp_path / "tok")
    tok = load_tokenizer(tmp_path / "tok")
    config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    path = tmp_path / "model"
    LlamaForCausalLM(config).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


@pytest.fixture
def hub_refusing(monkeypatch):
    """replaytune's probe is told the hub is online at a closed 127.0.0.1 port; huggingface_hub itself stays
    offline (HF_HUB_OFFLINE), so no request leaves this process: these tests check the wiring, the
    subprocess test above the probe."""
    import huggingface_hub.constants

    from replaytune import hub

    endpoint = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setattr(hub, "offline", lambda datasets=False: False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(hub, "_answers", {})
    return endpoint


def test_a_tokenizer_or_pretrained_model_id_is_probed_too(hub_refusing):
    from replaytune.config import ModelConfig
    from replaytune.data.tokenizer import load_tokenizer
    from replaytune.errors import DataError
    from replaytune.model import load_pretrained

    with pytest.raises(DataError, match=rf"^tokenizer org/tok: not a local path, and the Hugging Face hub at "
                                        rf"{hub_refusing} cannot be reached \(.*\); give a local path"):
        load_tokenizer("org/tok")
    with pytest.raises(DataError, match=r"^model.pretrained org/base: not a local path, and the Hugging Face hub at "):
        load_pretrained(ModelConfig(pretrained="org/base"))


def test_one_probe_per_endpoint_and_none_offline(hub_refusing, monkeypatch):
    from replaytune import hub
    from replaytune.errors import DataError

    calls = []
    real = hub.unreachable
    monkeypatch.setattr(hub, "unreachable", lambda url, timeout=hub.PROBE_TIMEOUT_S: calls.append(url) or real(url, timeout))
    for name in ("org/a", "org/b"):
        with pytest.raises(DataError):
            hub.require_hub("model", name)
    assert calls == [hub_refusing]  # the answer is kept
    monkeypatch.setattr(hub, "offline", lambda datasets=False: True)
    hub.require_hub("model", "org/c")  # offline: the libraries read their cache, nothing is sent
    assert calls == [hub_refusing]


def test_datasets_offline_counts_for_datasets_only(monkeypatch):
    import huggingface_hub.constants

    from replaytune import hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert hub.offline(datasets=True) and not hub.offline()
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    assert not hub.offline(datasets=True)
