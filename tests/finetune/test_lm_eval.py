"""lm-evaluation-harness through ``replaytune finetune --eval-tasks``, offline, on a task of local files.

The task is a cloze set written here: each example starts a Basque-like sentence (the target's
language, drawn fresh, so none of it was trained on) and offers two endings, the sentence's own
and an English-like one. Its YAML reads a local jsonl through the harness's own task mechanism
(``dataset_path: json`` with ``data_files``), found through ``--eval-include``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("lm_eval", reason="lm-evaluation-harness tests need the eval extra: pip install 'replaytune[eval]'")

from .conftest import EN, EU, base_values, sentences, write_jsonl
from replaytune.cli import main
from replaytune.errors import ConfigError
from replaytune.finetune import load_config, run_finetune

TASK = "eu_cloze"
EXAMPLES = 24


def write_task(folder, name: str = TASK, examples: int = EXAMPLES):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)  # not the fixture's seed: sentences the model was not trained on
    rows = []
    for i in range(examples):
        eu = sentences(EU, rng, 1).rstrip(".").split()
        en = sentences(EN, rng, 1).rstrip(".").lower().split()
        endings = [" ".join(eu[2:5]) + ".", " ".join(en[2:5]) + "."]  # three words each
        label = i % 2  # the right ending first in half of the examples
        rows.append({"context": " ".join(eu[:2]), "endings": endings if label == 0 else endings[::-1], "label": label})
    data = write_jsonl(folder / f"{name}.jsonl", rows)
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        f"  data_files:\n    test: {json.dumps(str(data))}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\n'
        "doc_to_choice: endings\n"
        "doc_to_target: label\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n"
    )
    return folder


def direct_acc(model_dir, tokenizer_dir, folder) -> float:
    """What the harness itself reports for a saved model on the task."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    lm = HFLM(pretrained=model, tokenizer=AutoTokenizer.from_pretrained(str(tokenizer_dir)), batch_size=8)
    out = lm_eval.simple_evaluate(model=lm, tasks=[TASK], log_samples=False,
                                  task_manager=TaskManager(include_path=str(folder), include_defaults=False))
    return out["results"][TASK]["acc,none"]


def test_finetune_scores_a_local_task_before_and_after(assets, tmp_path, capsys):
    folder = write_task(tmp_path / "tasks")
    out = tmp_path / "out"
    code = main([
        "finetune", "--model", str(assets.model), "--target", str(assets.target), "--replay", str(assets.generic),
        "--replay-val", "10", "--epochs", "2", "--seq-len", "32", "--batch-size", "4", "--lr", "3e-3",
        "--eval-sequences", "8", "--eval-interval", "0", "--device", "cpu", "--no-progress", "--output", str(out),
        "--eval-tasks", TASK, "--eval-include", str(folder),
    ])
    assert code == 0
    printed = capsys.readouterr().out
    down = json.loads((out / "forgetting.json").read_text())["downstream"]
    assert down["tasks"] == [TASK] and "error" not in down and "skipped" not in down, down
    assert down["examples"] == {TASK: EXAMPLES}
    base, tuned = (down["results"][who][TASK] for who in ("base", "finetuned"))
    assert set(base) == set(tuned) == {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"}
    for scores in (base, tuned):
        assert 0.0 <= scores["acc"] <= 1.0 and scores["acc"] * EXAMPLES == pytest.approx(round(scores["acc"] * EXAMPLES))
        assert scores["acc_stderr"] > 0
    # the Markdown table shows both, side by side, as does the printed report and the model card
    row = (f"| {TASK} | acc | {EXAMPLES} | {base['acc']:.4f} ± {base['acc_stderr']:.4f} | "
           f"{tuned['acc']:.4f} ± {tuned['acc_stderr']:.4f} | {tuned['acc'] - base['acc']:+.4f} |")
    assert row in (out / "forgetting.md").read_text()
    assert row in printed and row in (out / "model" / "README.md").read_text()
    # the same numbers as the harness gives for these models when called directly
    assert base["acc"] == pytest.approx(direct_acc(assets.model, assets.tokenizer, folder))
    assert tuned["acc"] == pytest.approx(direct_acc(out / "model", out / "tokenizer", folder))
    print(f"{TASK} acc: base {base['acc']:.4f}, fine-tuned {tuned['acc']:.4f}; acc_norm {base['acc_norm']:.4f} {tuned['acc_norm']:.4f}")


def test_unknown_task_fails_before_anything_is_written(assets, tmp_path):
    folder = write_task(tmp_path / "tasks")
    (folder / "broken.yaml").write_text("task: [unclosed\n")
    out = tmp_path / "out"
    cfg = load_config(None, base_values(assets, out, eval_tasks=["eu_clozee"], eval_include=[str(folder)]))
    with pytest.raises(ConfigError) as err:
        run_finetune(cfg)
    msg = str(err.value)
    assert "eval_tasks: no lm-evaluation-harness task named 'eu_clozee'" in msg
    assert f"{folder} (--eval-include)" in msg and "lm-evaluation-harness's own tasks" in msg
    assert f"Did you mean {TASK}" in msg and str(folder / "broken.yaml") in msg and "lm-eval ls tasks" in msg
    assert not out.exists()
    # a task whose data file is not there fails before training too, saying what to fix
    moved = tmp_path / "elsewhere"
    (folder / f"{TASK}.jsonl").rename(moved)
    with pytest.raises(ConfigError) as err:
        run_finetune(cfg.model_copy(update={"eval_tasks": [TASK]}))
    msg = str(err.value)
    assert msg.startswith(f"eval_tasks: lm-evaluation-harness could not load {TASK}: FileNotFoundError")
    assert "absolute paths in data_files" in msg and not out.exists()


def test_eval_settings_in_a_config_file(assets, tmp_path):
    write_task(tmp_path / "tasks")
    (tmp_path / "ft.yaml").write_text(f"model: {assets.model}\ntarget: {assets.target}\n"
                                      f"eval_tasks: {TASK}, xcopa_eu\neval_include: tasks\n")
    cfg = load_config(tmp_path / "ft.yaml")
    assert cfg.eval_tasks == [TASK, "xcopa_eu"] and cfg.eval_include == [str(tmp_path / "tasks")]
    missing = load_config(None, base_values(assets, tmp_path / "out", eval_tasks=[TASK],
                                            eval_include=[str(tmp_path / "nowhere")]))
    with pytest.raises(ConfigError, match=r"eval_include .*nowhere: no such folder; .*--eval-include DIR"):
        run_finetune(missing)
    assert not (tmp_path / "out").exists()
