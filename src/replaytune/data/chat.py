"""Chat and instruction examples: validation, rendering, and the loss mask.

Role rule (checked before rendering; :data:`ROLE_RULE`): an optional ``system`` message
first, then ``user`` and ``assistant`` turns strictly alternating, starting with ``user``, with
at least one ``assistant`` turn. A conversation that ends with a ``user`` turn after a valid
exchange is fixed by dropping that last turn (it has no reply to learn), and counted.
Everything else (no assistant turn, an assistant first, two user or two assistant turns in a
row, an unknown role, a message without string ``role``/``content``) is an
:class:`InvalidExample` naming file, line and message index.

Where the assistant tokens are
------------------------------
The conversation is rendered to text with the tokenizer's chat template (or the template
given). For assistant message k the loss region is the characters between
``render(messages[:k], add_generation_prompt=True)`` (the prompt ending with the assistant
header) and ``render(messages[:k+1])`` (which ends after the reply and its end-of-turn
marker), so the model learns the reply and when to stop, never the prompt or the headers.
This needs a template whose renderings of shorter prefixes are prefixes of the full text
(true of the common templates); that is checked for every example. A template that is not
incremental but marks replies with ``{% generation %}`` falls back to transformers'
``return_assistant_tokens_mask``; one that does neither is an error.

The full text is then tokenized once (as the model sees it at inference) and a token is a
loss target when its character span overlaps a loss region (offsets from a fast tokenizer;
a tokenizer without offsets tokenizes the regions separately).

The EOS that ``prepare`` appends to every example is a loss target only when it directly
follows a loss token (the end of the final reply or completion): the model learns to stop
after answering, never after a prompt, and never at a cut made by ``max_length``.

Instruction pairs are not rendered: prompt and completion are tokenized separately and
concatenated, loss on the completion. That is the tokenization the model meets at inference
(the prompt's tokens end where the generation starts), also when the prompt ends in a space.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from replaytune.errors import DataError

ROLE_RULE = "an optional system message first, then user and assistant turns alternating, starting with user"

# A plain-text ChatML-style template for tokenizers without one (`--chat-template chatml`).
# Markers are ordinary text for a tokenizer that lacks them as special tokens.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
BUILTIN_TEMPLATES = {"chatml": CHATML_TEMPLATE}


class InvalidExample(DataError):
    """A chat or instruction example that breaks the rules (skippable with ``skip_invalid``)."""


def check_messages(messages: Any, where: str) -> tuple[list[dict[str, str]], bool]:
    """Validate a conversation against :data:`ROLE_RULE`.

    Returns the messages (a trailing unanswered user turn removed) and whether one was removed.
    """
    if not isinstance(messages, list) or not messages:
        raise InvalidExample(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise InvalidExample(f"{where}: message {i} must be an object with string 'role' and 'content'")
        out.append({"role": m["role"], "content": m["content"]})
    roles = [m["role"] for m in out]
    for i, role in enumerate(roles):
        if role not in ("system", "user", "assistant"):
            raise InvalidExample(f"{where}: message {i} has role '{role}'; roles must be system, user or assistant")
    if "assistant" not in roles:
        raise InvalidExample(f"{where}: no assistant turn, so nothing to learn; each chat example needs an assistant reply")
    first = 1 if roles[0] == "system" else 0
    for i in range(first, len(roles)):
        expected = "user" if (i - first) % 2 == 0 else "assistant"
        if roles[i] != expected:
            after = f"after '{roles[i - 1]}'" if i > 0 else "first"
            raise InvalidExample(
                f"{where}: roles out of order at message {i} ('{roles[i]}' {after}); expected {ROLE_RULE}"
            )
    dropped = roles[-1] == "user"
    return (out[:-1] if dropped else out), dropped


def load_template(value: str | None) -> str | None:
    """A template given as a built-in name (``chatml``), a file path, or Jinja text."""
    if value is None:
        return None
    if value in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[value]
    if "{" not in value:
        p = Path(value).expanduser()
        if not p.is_file():
            raise DataError(f"chat template {value}: no such file (give a Jinja file, or 'chatml' for the built-in one)")
        return p.read_text(encoding="utf-8")
    return value


def resolve_template(tok: Any, template: str | None, tokenizer_name: str) -> str:
    """The template to render with: the one given, else the tokenizer's; else an error."""
    if template:
        return template
    own = getattr(tok, "chat_template", None)
    if isinstance(own, dict):  # several named templates: use the default one
        own = own.get("default")
    if not own:
        raise DataError(
            f"tokenizer {tokenizer_name} has no chat template; pass --chat-template FILE (a Jinja template), "
            f"or --chat-template chatml for a plain built-in one"
        )
    return own


def _apply(tok: Any, messages: list[dict], template: str, where: str, **kw: Any) -> Any:
    try:
        return tok.apply_chat_template(messages, chat_template=template, **kw)
    except Exception as exc:  # jinja raise_exception() and template bugs
        raise InvalidExample(f"{where}: the chat template failed on this example ({type(exc).__name__}: {exc})") from None


def render(tok: Any, messages: list[dict], template: str, where: str) -> tuple[str, list[tuple[int, int]]] | tuple[list[int], list[int]]:
    """Render a checked conversation.

    Returns ``(text, regions)`` with the character regions of the assistant replies, or, for a
    non-incremental template with ``{% generation %}`` markers, ``(ids, mask)`` directly.
    """
    full = _apply(tok, messages, template, where, tokenize=False)
    regions = []
    incremental = True
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _apply(tok, messages[:k], template, where, tokenize=False, add_generation_prompt=True)
        upto = full if k == len(messages) - 1 else _apply(tok, messages[: k + 1], template, where, tokenize=False)
        if not (full.startswith(upto) and upto.startswith(before)):
            incremental = False
            break
        regions.append((len(before), len(upto)))
    if incremental:
        return full, regions
    if "generation" in template:
        out = _apply(tok, messages, template, where, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        return list(out["input_ids"]), [int(x) for x in out["assistant_masks"]]
    raise DataError(
        f"{where}: the chat template does not render conversations incrementally (a shorter prefix of the "
        f"conversation is not a prefix of the full text), so the assistant tokens cannot be located; "
        f"pass --chat-template FILE with an incremental template or one with {{% generation %}} markers"
    )


def region_mask(offsets: list[tuple[int, int]], regions: list[tuple[int, int]]) -> list[int]:
    """1 for each token whose character span overlaps a region (start < region end, end > region start)."""
    mask = [0] * len(offsets)
    for j, (s, e) in enumerate(offsets):
        for a, b in regions:
            if s < b and e > a:
                mask[j] = 1
                break
    return mask
