"""A bad flag value is one line on stderr naming the flag and the value (no usage dump), exit status 2."""

from __future__ import annotations

import pytest

from replaytune.cli import main


def _one_line_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert captured.out == ""
    return lines[0]


def _finetune(tmp_path, *flags: str) -> list[str]:
    target = tmp_path / "eu.txt"
    target.write_text("Kaixo mundua.\n")
    return ["finetune", "--model", "m", "--target", str(target), "--output", str(tmp_path / "out"), *flags]


@pytest.mark.parametrize("value, expected", [
    ("x:-1", "argument --replay: 'x:-1': the weight after ':' must be > 0, got -1"),
    ("x:0", "argument --replay: 'x:0': the weight after ':' must be > 0, got 0"),
])
def test_replay_weight_not_positive(tmp_path, capsys, value, expected):
    line = _one_line_error(capsys, _finetune(tmp_path, "--replay", value))
    assert line.startswith("replaytune finetune: error: " + expected)
    assert "usage:" not in line and not (tmp_path / "out").exists()


def test_replay_weight_not_a_number_names_the_weight(tmp_path, capsys):
    web = tmp_path / "web.jsonl"
    web.write_text('{"text": "hello"}\n')
    line = _one_line_error(capsys, _finetune(tmp_path, "--replay", f"{web}:abc"))
    assert f"argument --replay: '{web}:abc': the weight after ':' must be a number > 0, got 'abc'" in line
    assert "no such file" not in line
    # a data file's name that is not on disk: still the weight that is wrong
    line = _one_line_error(capsys, _finetune(tmp_path, "--target", "gone.jsonl:x"))
    assert "argument --target: 'gone.jsonl:x': the weight after ':' must be a number > 0, got 'x'" in line


@pytest.mark.parametrize("value", ["abc", "1", "-0.5", "nan"])
def test_replay_fraction_out_of_range_or_not_a_number(tmp_path, capsys, value):
    line = _one_line_error(capsys, _finetune(tmp_path, "--replay-fraction", value))
    assert line.startswith(f"replaytune finetune: error: argument --replay-fraction: {value!r}: give the replay share "
                           f"of the batch as a number in [0, 1), e.g. 0.5, or auto")
    assert "_rho" not in line


@pytest.mark.parametrize("command", ["finetune", "train"])
def test_report_to_unknown_tracker(tmp_path, capsys, command):
    argv = _finetune(tmp_path) if command == "finetune" else ["train", str(tmp_path / "run.yaml")]
    line = _one_line_error(capsys, argv + ["--report-to", "nonsense"])
    flag = "--report-to/--report_to" if command == "finetune" else "--report-to"  # finetune takes Transformers' name too
    assert line.startswith(f"replaytune {command}: error: argument {flag}: unknown tracker 'nonsense'; choose from "
                           f"none, tensorboard, wandb, mlflow, trackio")


def test_other_parse_errors_are_one_line_too(tmp_path, capsys):
    line = _one_line_error(capsys, ["train"])
    assert line.startswith("replaytune train: error: the following arguments are required: CONFIG.yaml")
    line = _one_line_error(capsys, _finetune(tmp_path, "--epochs", "two"))
    assert "argument --epochs/--num_train_epochs: invalid float value: 'two'" in line
    line = _one_line_error(capsys, ["nosuchcommand"])
    assert line.startswith("replaytune: error: argument COMMAND: invalid choice: 'nosuchcommand'")


def test_split_weight_keeps_hub_revisions_and_existing_paths(tmp_path):
    from replaytune.finetune.config import split_weight

    assert split_weight("org/name:main") == ("org/name:main", None)
    odd = tmp_path / "a.jsonl:abc"
    odd.write_text("")
    assert split_weight(str(odd)) == (str(odd), None)  # the whole string is a file
    assert split_weight("web.jsonl:0.7") == ("web.jsonl", 0.7)
    with pytest.raises(ValueError, match=r"'web\.jsonl:abc': the weight after ':' must be a number > 0, got 'abc'"):
        split_weight("web.jsonl:abc")
