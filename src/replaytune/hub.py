"""One quick look at the Hugging Face hub before a hub id (model, tokenizer, dataset) is resolved.

Without ``HF_HUB_OFFLINE``, transformers and datasets retry an unreachable hub for 30-60 s
(11 retry lines for a model id) and end on an error about whatever they fetched last (the
tokenizer, not the model the user named). :func:`require_hub` sends one HEAD request to the
hub's endpoint (``HF_ENDPOINT``, default https://huggingface.co) through huggingface_hub's
own HTTP session (so its proxy and certificate settings apply), bounded at
:data:`PROBE_TIMEOUT_S` seconds, DNS included. Any HTTP answer counts as reachable; no
answer is one line naming what the user gave and the two ways out: a local path, or
``HF_HUB_OFFLINE=1`` to use what the hub cache already holds. The answer is kept for the
process (one probe per endpoint). With ``HF_HUB_OFFLINE`` set nothing is sent: the
libraries read their cache.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

from replaytune.errors import DataError

PROBE_TIMEOUT_S = 3.0
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name


def looks_like_path(text: str) -> bool:
    """The one rule for a name that is not on disk: a missing local path, or (False) a hub id.

    Hub ids are ``name`` or ``org/name``. A name starting with ``/``, ``./``, ``../``, ``~`` or
    ``.``, one with two or more ``/``, or ``org/name`` whose ``org`` is a folder here
    (``models/mine`` beside a ``models/`` folder) is a local path, reported missing at once
    instead of sent to the hub.
    """
    text = str(text)
    if text.startswith(("/", "./", "../", "~", ".")) or text.count("/") > 1 or os.sep != "/" and os.sep in text:
        return True
    head = text.split("/", 1)[0]
    return "/" in text and Path(head).expanduser().is_dir()


def is_hub_id(name: str | None) -> bool:
    """An ``owner/name`` that is neither on disk nor shaped like a path (what a model card may cite)."""
    if not name:
        return False
    name = str(name)
    return bool(HUB_ID.match(name)) and not Path(name).expanduser().exists() and not looks_like_path(name)

_answers: dict[str, str | None] = {}  # endpoint -> None (reachable) or why not


def offline(datasets: bool = False) -> bool:
    """``HF_HUB_OFFLINE`` as huggingface_hub read it (at import); ``datasets``: ``HF_DATASETS_OFFLINE`` counts too."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return True
    return datasets and os.environ.get("HF_DATASETS_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT.rstrip("/")


def unreachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when ``url`` gives any HTTP answer within ``timeout`` seconds; else why not (one line)."""
    from huggingface_hub.utils import get_session

    answer: list[str | None] = []

    def probe() -> None:
        try:
            get_session().head(url, timeout=timeout)
            answer.append(None)
        except Exception as exc:  # connection refused, DNS failure, timeout, TLS: all mean "not reachable"
            text = " ".join(str(exc).split())[:160]
            answer.append(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)

    thread = threading.Thread(target=probe, name="hub-probe", daemon=True)  # a hung DNS lookup cannot hold us
    thread.start()
    thread.join(timeout + 0.5)
    return answer[0] if answer else f"no answer within {timeout:g} s"


def require_hub(what: str, name: str) -> None:
    """Before ``name`` (not a local path) is looked up on the hub: the hub answers, or one DataError.

    ``what`` is the user's word for it (``model``, ``tokenizer``, ``dataset``). Does nothing
    under ``HF_HUB_OFFLINE`` (for a dataset, ``HF_DATASETS_OFFLINE`` too).
    """
    if offline(datasets=what == "dataset"):
        return
    url = endpoint()
    if url not in _answers:
        _answers[url] = unreachable(url)
    why = _answers[url]
    if why is not None:
        raise DataError(
            f"{what} {name}: not a local path, and the Hugging Face hub at {url} cannot be reached ({why}); "
            f"give a local path, or set HF_HUB_OFFLINE=1 to use the copy in the hub cache"
        )
