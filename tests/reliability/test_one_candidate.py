"""``--replay-fraction auto`` with one candidate says so in one line and fine-tunes it, without a search."""

from __future__ import annotations

import json

from .conftest import finetune_argv
from replaytune.cli import main


def test_one_candidate_is_said_and_trained_without_a_search(ft_inputs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(finetune_argv(ft_inputs, out, "--replay-fraction", "auto", "--replay-candidates", "0.25")) == 0
    said = capsys.readouterr().out.splitlines()
    assert said.count("replay fraction auto: one candidate (rho 0.25), so nothing to search; fine-tuning with it") == 1
    assert not any(line.startswith("replay fraction search") for line in said)
    assert not (out / "search").exists() and not (out / "replay_search.json").exists()
    summary = json.loads((out / "finetune.json").read_text())
    assert summary["plan"]["replay_fraction"] == 0.25 and summary["settings"]["replay_fraction"] == 0.25
