"""Chat and instruction data: loss masks exactly on assistant / completion tokens, and bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from replaytune.cli import main
from replaytune.data.chat import CHATML_TEMPLATE
from replaytune.data.prepare import prepare
from replaytune.data.sources import SourceSpec
from replaytune.errors import DataError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
END = "<|end|>\n"
EOS = "<|endoftext|>"

CONVS = [
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": "Hi. How can I help?"},
        {"role": "user", "content": "what is 2 + 2?"},
        {"role": "assistant", "content": "It is 4, café 🙂"},
    ],
    [
        {"role": "user", "content": "Kaixo!"},
        {"role": "assistant", "content": "Kaixo, zer moduz?"},
    ],
]


@pytest.fixture
def chat_tok(tiny_tok_path):
    from replaytune.data.tokenizer import load_tokenizer

    tok = load_tokenizer(tiny_tok_path)  # a fresh copy: the session tokenizer stays template-free
    tok.chat_template = TEMPLATE
    return tok


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def chats(path, convs):
    return write(path, [{"messages": c} for c in convs])


def runs(tok, split, doc):
    """Decoded text of each contiguous masked run of document ``doc``, and of the whole document."""
    a, b = int(split.docs[doc]), int(split.docs[doc + 1])
    ids, mask = np.asarray(split.tokens[a:b]).tolist(), np.asarray(split.mask[a:b]).tolist()
    out, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            out.append(tok.decode(cur))
            cur = []
    if cur:
        out.append(tok.decode(cur))
    return out, tok.decode(ids)


def test_mask_is_exactly_the_assistant_replies(tmp_path, chat_tok):
    src = chats(tmp_path / "c.jsonl", CONVS)
    store, stats = prepare(SourceSpec(str(src), kind="chat"), chat_tok, tmp_path / "st", val_fraction=0.0, progress=False)
    assert store.has_loss_mask and store.train.num_docs == 2
    for d, conv in enumerate(CONVS):
        masked, whole = runs(chat_tok, store.train, d)
        replies = [m["content"] + END for m in conv if m["role"] == "assistant"]
        replies[-1] += EOS  # the appended EOS is learned after the final reply
        assert masked == replies
        assert whole == chat_tok.apply_chat_template(conv, tokenize=False) + EOS
    assert stats["loss_tokens"]["train"] == int(np.asarray(store.train.mask).sum())
    # windows of the packed stream carry the aligned mask
    seqs, masks = store.train.sequences(np.array([0, 1]), 8), store.train.masks(np.array([0, 1]), 8)
    assert seqs.shape == masks.shape == (2, 9) and masks.dtype == bool


def test_builtin_template_for_a_tokenizer_without_one(tmp_path, tiny_tok):
    src = chats(tmp_path / "c.jsonl", CONVS[1:])
    store, _ = prepare(SourceSpec(str(src), kind="chat"), tiny_tok, tmp_path / "st", val_fraction=0.0,
                       chat_template="chatml", progress=False)
    masked, whole = runs(tiny_tok, store.train, 0)
    assert masked == ["Kaixo, zer moduz?<|im_end|>\n" + EOS]
    assert whole == "<|im_start|>user\nKaixo!<|im_end|>\n<|im_start|>assistant\nKaixo, zer moduz?<|im_end|>\n" + EOS
    # the same template from a file gives the same store content
    f = tmp_path / "tpl.jinja"
    f.write_text(CHATML_TEMPLATE)
    again, _ = prepare(SourceSpec(str(src), kind="chat"), tiny_tok, tmp_path / "st2", val_fraction=0.0,
                       chat_template=str(f), progress=False)
    assert again.train.tokens.tolist() == store.train.tokens.tolist()


def test_no_chat_template_and_none_given(tmp_path, tiny_tok):
    src = chats(tmp_path / "c.jsonl", CONVS)
    with pytest.raises(DataError) as e:
        prepare(SourceSpec(str(src), kind="chat"), tiny_tok, tmp_path / "st", progress=False)
    assert str(e.value) == (
        f"tokenizer {tiny_tok.name_or_path} has no chat template; pass --chat-template FILE (a Jinja template), "
        "or --chat-template chatml for a plain built-in one"
    )
    assert not (tmp_path / "st").exists()


def test_missing_template_file(tmp_path, tiny_tok):
    src = chats(tmp_path / "c.jsonl", CONVS)
    with pytest.raises(DataError, match=r"chat template nope.jinja: no such file"):
        prepare(SourceSpec(str(src), kind="chat"), tiny_tok, tmp_path / "st", chat_template="nope.jinja")


@pytest.mark.parametrize(
    "conv, message",
    [
        ([{"role": "user", "content": "hi"}],
         "no assistant turn, so nothing to learn; each chat example needs an assistant reply"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}],
         "roles out of order at message 1 ('user' after 'user'); expected an optional system message first, "
         "then user and assistant turns alternating, starting with user"),
        ([{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}],
         "roles out of order at message 0 ('assistant' first); expected an optional system message first, "
         "then user and assistant turns alternating, starting with user"),
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}, {"role": "assistant", "content": "c"}],
         "roles out of order at message 1 ('system' after 'user'); expected an optional system message first, "
         "then user and assistant turns alternating, starting with user"),
        ([{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}],
         "message 1 has role 'tool'; roles must be system, user or assistant"),
        ([{"role": "user", "content": "a"}, {"role": "assistant"}],
         "message 1 must be an object with string 'role' and 'content'"),
        ([], "'messages' must be a non-empty list of {role, content} objects"),
    ],
)
def test_bad_conversations_name_file_line_and_rule(tmp_path, chat_tok, conv, message):
    src = chats(tmp_path / "c.jsonl", [CONVS[1], conv])
    with pytest.raises(DataError) as e:
        prepare(SourceSpec(str(src), kind="chat"), chat_tok, tmp_path / "st", progress=False)
    assert str(e.value) == f"{src}:2: {message}"
    assert not (tmp_path / "st").exists()


def test_skip_invalid_counts_and_reports(tmp_path, chat_tok):
    bad = [{"role": "user", "content": "x"}]
    src = chats(tmp_path / "c.jsonl", [CONVS[0], bad, CONVS[1], bad])
    store, stats = prepare(SourceSpec(str(src), kind="chat"), chat_tok, tmp_path / "st", val_fraction=0.0,
                           skip_invalid=True, progress=False)
    assert store.train.num_docs == 2 and stats["skipped_invalid"] == 2
    assert stats["invalid_examples"][0].startswith(f"{src}:2: no assistant turn")


def test_trailing_user_turn_is_dropped_and_counted(tmp_path, chat_tok):
    conv = CONVS[1] + [{"role": "user", "content": "and then?"}]
    src = chats(tmp_path / "c.jsonl", [conv])
    store, stats = prepare(SourceSpec(str(src), kind="chat"), chat_tok, tmp_path / "st", val_fraction=0.0, progress=False)
    assert stats["dropped_trailing_user"] == 1
    masked, whole = runs(chat_tok, store.train, 0)
    assert masked == ["Kaixo, zer moduz?" + END + EOS] and "and then?" not in whole


def test_over_long_examples_truncated_and_counted_or_refused(tmp_path, chat_tok):
    src = chats(tmp_path / "c.jsonl", CONVS)
    full, _ = prepare(SourceSpec(str(src), kind="chat"), chat_tok, tmp_path / "full", val_fraction=0.0, progress=False)
    lengths = np.diff(full.train.docs).tolist()
    limit = lengths[1] + 1  # the second example fits, the first does not
    assert lengths[0] > limit
    store, stats = prepare(SourceSpec(str(src), kind="chat"), chat_tok, tmp_path / "st", val_fraction=0.0,
                           max_length=limit, progress=False)
    assert stats["truncated"] == 1 and np.diff(store.train.docs).tolist() == [limit, lengths[1]]
    a = limit
    assert store.train.tokens[:a - 1].tolist() == full.train.tokens[:a - 1].tolist()
    assert store.train.tokens[a - 1] == chat_tok.eos_token_id and store.train.mask[a - 1] == 0  # cut: do not learn to stop
    with pytest.raises(DataError) as e:
        prepare(SourceSpec(str(src), kind="chat"), chat_tok, tmp_path / "st2", max_length=limit, strict=True, progress=False)
    assert str(e.value) == (
        f"{src}:1: example has {lengths[0]} tokens (with EOS), over --max-example-length {limit}; "
        "shorten it, raise --max-example-length, or drop --strict to truncate it (counted)"
    )
    assert not (tmp_path / "st2").exists()


def test_non_incremental_template_is_refused(tmp_path, chat_tok):
    chat_tok.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] }}{% if loop.last %}{{ ' [END]' }}{% endif %}"
        "{{ '\n' }}{% endfor %}"
    )
    src = chats(tmp_path / "c.jsonl", CONVS[1:])
    with pytest.raises(DataError, match=rf"^{src}:1: the chat template does not render conversations incrementally"):
        prepare(SourceSpec(str(src), kind="chat"), chat_tok, tmp_path / "st", progress=False)


def test_generation_markers_fallback(tmp_path, chat_tok):
    chat_tok.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' }}"
        "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}{% endgeneration %}"
        "{% else %}{{ m['content'] }}{% endif %}{% if loop.last %}{{ ' [END]' }}{% endif %}{{ '\n' }}{% endfor %}"
    )
    src = chats(tmp_path / "c.jsonl", CONVS[:1])
    store, _ = prepare(SourceSpec(str(src), kind="chat"), chat_tok, tmp_path / "st", val_fraction=0.0, progress=False)
    masked, _ = runs(chat_tok, store.train, 0)
    # transformers marks the tokens overlapping each {% generation %} block (" It" carries the
    # header's space); EOS follows " [END]\n", not a reply, so it is not a target
    assert [m.lstrip() for m in masked] == ["Hi. How can I help?", "It is 4, café 🙂"]


def test_instruction_loss_on_completion_only(tmp_path, tiny_tok):
    rows = [{"prompt": "Question: capital of France?\nAnswer: ", "completion": "Paris"},
            {"prompt": "Translate: cat ->", "completion": " katu"}]
    src = write(tmp_path / "i.jsonl", rows)
    store, stats = prepare(SourceSpec(str(src), kind="instruction"), tiny_tok, tmp_path / "st", val_fraction=0.0,
                           progress=False)
    for d, row in enumerate(rows):
        masked, whole = runs(tiny_tok, store.train, d)
        assert masked == [row["completion"] + EOS]
        assert whole == row["prompt"] + row["completion"] + EOS
        a = int(store.train.docs[d])
        p = tiny_tok(row["prompt"], add_special_tokens=False)["input_ids"]
        assert store.train.tokens[a:a + len(p)].tolist() == p  # the prompt is tokenized as at inference
    assert stats["loss_tokens"]["train"] == sum(len(tiny_tok(r["completion"])["input_ids"]) + 1 for r in rows)


def test_instruction_field_missing(tmp_path, tiny_tok):
    src = write(tmp_path / "i.jsonl", [{"prompt": "a", "answer": "b"}])
    with pytest.raises(DataError) as e:
        prepare(SourceSpec(str(src), kind="instruction"), tiny_tok, tmp_path / "st", progress=False)
    assert str(e.value) == f"{src}:1: no field 'completion' (fields: answer, prompt); choose one with --completion-field"


def test_cli_chat(tmp_path, tiny_tok_path, capsys):
    src = chats(tmp_path / "c.jsonl", CONVS * 3)
    out = tmp_path / "st"
    rc = main(["prepare", str(src), "--tokenizer", tiny_tok_path, "--out", str(out), "--kind", "chat",
               "--chat-template", "chatml", "--max-length", "30", "--val-docs", "1", "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 0 and "fixes: truncated: " in printed
    rc = main(["prepare", str(src), "--tokenizer", tiny_tok_path, "--out", str(tmp_path / "st2"), "--kind", "chat",
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith(f"replaytune prepare: error: tokenizer {tiny_tok_path} has no chat template")
