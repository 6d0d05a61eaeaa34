"""The README's two set-up commands are the ones the Makefile and CI run."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```(?:sh|bash)?\n(.*?)```", text, re.S)
    assert block, "README must start with a code block holding the set-up commands"
    before = text[: block.start()]
    assert before.count("```") == 0 and before.count("\n") < 6, "the commands come first"
    lines = [ln.split("#")[0].strip() for ln in block.group(1).splitlines()]
    return [ln for ln in lines if ln]


def test_readme_starts_with_exactly_two_commands():
    assert _readme_commands() == ["make demo", "make test"]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert "make test" in [ln.strip() for ln in ci]
    assert _readme_commands()[1] == "make test"


def test_make_targets_install_before_running():
    mk = (ROOT / "Makefile").read_text()
    for target, stamp in (("demo", "$(DEMO_STAMP)"), ("test", "$(TEST_STAMP)")):
        line = re.search(rf"^{target}: (.*)$", mk, re.M)
        assert line and stamp in line.group(1), f"make {target} must depend on its install step"
    assert "torch==2.13.0" in mk and "-c constraints.txt" in mk
    # make demo installs no extras; make test installs the extras the tests exercise
    demo = re.search(r"^\$\(DEMO_STAMP\):.*?\n((?:\t.*\n)+)", mk, re.M).group(1)
    test = re.search(r"^\$\(TEST_STAMP\):.*?\n((?:\t.*\n)+)", mk, re.M).group(1)
    assert "-e .\n" in demo and "[" not in demo
    assert "-e '.[test," in test and all(x in test for x in ("trl", "eval", "wandb", "mlflow", "ray"))
