"""Bad input: each case gets one clear error (or a counted fix), and a failed start writes nothing."""

from __future__ import annotations

import json

import pytest

from .conftest import base_values, conversation, write_jsonl
from replaytune.cli import main
from replaytune.data.chat import CHATML_TEMPLATE
from replaytune.errors import ConfigError, DataError, ReplaytuneError
from replaytune.finetune import run_finetune


def _fails(cfg, error, match):
    with pytest.raises(error, match=match):
        run_finetune(cfg, log=lambda s: None)


def _chat_file(tmp_path, rows):
    return write_jsonl(tmp_path / "bad.jsonl", rows)


def test_chat_example_without_assistant_turn(assets, finetune_cfg, tmp_path):
    import numpy as np

    rows = [{"messages": conversation(np.random.default_rng(i))} for i in range(5)]
    rows.insert(3, {"messages": [{"role": "system", "content": "Kaixo."}, {"role": "user", "content": "Zer da etxe?"}]})
    path = _chat_file(tmp_path, rows)
    cfg = finetune_cfg(model=str(assets.chat_model), target={"path": str(path)}, seq_len=64)
    _fails(cfg, DataError, r"bad\.jsonl:4: no assistant turn, so nothing to learn")
    assert not (tmp_path / "out").exists()


def test_roles_out_of_order(assets, finetune_cfg, tmp_path):
    rows = [{"messages": [{"role": "assistant", "content": "Kaixo."}, {"role": "user", "content": "Zer da etxe?"},
                          {"role": "assistant", "content": "Etxe bat."}]}]
    path = _chat_file(tmp_path, rows)
    cfg = finetune_cfg(model=str(assets.chat_model), target={"path": str(path)}, seq_len=64)
    _fails(cfg, DataError, r"bad\.jsonl:1: roles out of order at message 0 \('assistant' first\)")
    assert not (tmp_path / "out").exists()


def test_over_long_examples_are_truncated_and_counted_or_refused(assets, finetune_cfg, tmp_path):
    from replaytune.data.tokenizer import load_tokenizer

    tok = load_tokenizer(assets.chat_model)
    lengths = []
    for line in assets.chat.read_text().splitlines():
        text = tok.apply_chat_template(json.loads(line)["messages"], chat_template=CHATML_TEMPLATE, tokenize=False)
        lengths.append(len(tok(text, add_special_tokens=False)["input_ids"]) + 1)  # + EOS
    limit = sorted(lengths)[len(lengths) // 2]  # about half the examples are longer
    expected = sum(n > limit for n in lengths)
    assert 0 < expected < len(lengths)
    res = run_finetune(finetune_cfg(model=str(assets.chat_model), target={"path": str(assets.chat)}, seq_len=64,
                                    max_example_length=limit, epochs=1), log=lambda s: None)
    assert res.summary["data"]["target"]["stats"]["truncated"] == expected
    # refused by flag, and nothing written
    strict = finetune_cfg(model=str(assets.chat_model), target={"path": str(assets.chat)}, seq_len=64,
                          max_example_length=limit, strict=True, output=str(tmp_path / "strict"))
    _fails(strict, DataError, rf"example has \d+ tokens \(with EOS\), over --max-example-length {limit}")
    assert not (tmp_path / "strict").exists()


def test_tokenizer_without_chat_template_and_none_given(assets, finetune_cfg, tmp_path):
    cfg = finetune_cfg(target={"path": str(assets.chat)}, seq_len=64)  # `model` has no chat template
    _fails(cfg, DataError, r"has no chat template; pass --chat-template FILE .* or --chat-template chatml")
    assert not (tmp_path / "out").exists()
    with pytest.warns(UserWarning, match=r"rounding up to whole steps shows it 0\.\d+ times instead of 0\.3"):
        ok = run_finetune(finetune_cfg(target={"path": str(assets.chat)}, seq_len=64, chat_template="chatml", epochs=0.3),
                          log=lambda s: None)
    # the template trained with is saved with the model's tokenizer
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(ok.output / "model")).chat_template == CHATML_TEMPLATE


def test_model_path_that_does_not_exist(assets, finetune_cfg, tmp_path):
    _fails(finetune_cfg(model=str(tmp_path / "no" / "such" / "model")), DataError, "no such file or directory")
    _fails(finetune_cfg(model=str(assets.root)), DataError, r"not a Hugging Face model folder \(no config.json\)")
    _fails(finetune_cfg(model=str(assets.model), gguf_file="x.gguf"), DataError, "no GGUF file 'x.gguf'")
    assert not (tmp_path / "out").exists()


def test_missing_source(finetune_cfg, tmp_path):
    _fails(finetune_cfg(target={"path": str(tmp_path / "nope.jsonl")}), DataError, r"target source: .*nope\.jsonl: no such file")
    _fails(finetune_cfg(replay={"path": str(tmp_path / "gone.txt")}), DataError, r"replay source: .*gone\.txt: no such file")


def test_replay_store_from_another_tokenizer_cannot_be_mixed(assets, finetune_cfg, tmp_path):
    from replaytune.data.prepare import prepare
    from replaytune.data.sources import SourceSpec
    from replaytune.data.tokenizer import train_tokenizer

    train_tokenizer([str(assets.generic)], 300, tmp_path / "other_tok")
    prepare(SourceSpec(str(assets.generic)), str(tmp_path / "other_tok"), tmp_path / "other_store", progress=False)
    cfg = finetune_cfg(replay={"path": str(tmp_path / "other_store")})
    _fails(cfg, DataError, r"replay source .*other_store: a token store built with tokenizer .* cannot be mixed in")
    assert not (tmp_path / "out").exists()


def test_derived_run_fields_cannot_be_overridden(finetune_cfg, tmp_path):
    _fails(finetune_cfg(overrides=["data.batch_size=8"]), ConfigError, r"--set data.batch_size=8: this field follows")
    assert not (tmp_path / "out").exists()


def test_output_directory_that_is_not_ours(finetune_cfg, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    _fails(finetune_cfg(), ReplaytuneError, "exists and is not a replaytune finetune output")
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_cli_errors_are_one_line(assets, tmp_path, capsys):
    code = main(["finetune", "--model", str(tmp_path / "none"), "--target", str(assets.target), "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and err.startswith("replaytune finetune: error: model ")
    code = main(["finetune", "--target", str(assets.target)])
    assert code == 2 and "field 'model': Field required" in capsys.readouterr().err
    code = main(["finetune", "--model", str(assets.model), "--target", str(assets.target), "--replay-fraction", "0.5"])
    assert code == 2 and "needs a replay source" in capsys.readouterr().err


def test_a_tokenizer_larger_than_the_embedding_fails_before_anything_is_written(assets, tmp_path):
    import shutil

    from replaytune.finetune import load_config

    small = tmp_path / "small_model"
    shutil.copytree(assets.model, small)
    config = json.loads((small / "config.json").read_text())
    config["vocab_size"] = 10  # fewer rows than the tokenizer has ids
    (small / "config.json").write_text(json.dumps(config))
    out = tmp_path / "o"
    cfg = load_config(None, base_values(assets, out, model=str(small), tokenizer=str(assets.tokenizer)))
    with pytest.raises(DataError, match="vocabulary mismatch.*10 embedding rows"):
        run_finetune(cfg)
    assert not out.exists()
