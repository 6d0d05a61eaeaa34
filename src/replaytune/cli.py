"""The ``replaytune`` command: a thin dispatcher.

Each subcommand lives in ``replaytune.commands.<name>`` and exposes ``register(subparsers)``,
which adds its parser and sets ``func``. Command modules import heavy libraries (torch,
transformers) inside their functions so that ``--help`` stays fast. Errors derived from
:class:`replaytune.errors.ReplaytuneError` become one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from replaytune import __version__
from replaytune.errors import ReplaytuneError
from replaytune.fsio import public_path

# Order shown in --help: the main job first, then building blocks.
COMMANDS = (
    "demo",
    "study",
    "sweep",
    "train",
    "finetune",
    "efficiency",
    "report",
    "prepare",
    "tokenizer",
    "schedule",
    "batches",
)


class Parser(argparse.ArgumentParser):
    """argparse with its errors as one line (``replaytune CMD: error: ...``), not the usage first.

    Subcommand parsers are of the same class (argparse makes them with the parent's type),
    so a bad flag value anywhere reads: ``replaytune finetune: error: argument
    --replay-fraction: 'abc': ... (replaytune finetune --help lists the flags)``.
    """

    def error(self, message: str):
        message = " ".join(message.split())  # argparse's own messages can span lines
        self.exit(2, f"{self.prog}: error: {message} ({self.prog} --help lists the flags)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="replaytune",
        description="Train and fine-tune language models with replay of generic pre-training data.",
    )
    parser.add_argument("--version", action="version", version=f"replaytune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"replaytune.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"replaytune.commands.{name}":
                continue  # command not shipped in this build
            raise
        module.register(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's kill, ``timeout``), unwound like Ctrl-C: cleanup runs (locks released,
    a sweep's worker processes stopped) instead of the process vanishing with its children alive."""


def _terminate_as_interrupt() -> None:
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may set handlers (main() called from a test's thread)

    def handler(signum, frame):
        raise Terminated()

    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _terminate_as_interrupt()
    try:
        return int(args.func(args) or 0)
    except ReplaytuneError as exc:
        print(f"replaytune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the file system refused: a read-only or full disk, a file where a folder goes
        where = f"{public_path(exc.filename)}: " if exc.filename else ""  # not a writer's temporary name
        why = exc.strerror or str(exc)
        hint = {28: "free some space, or write elsewhere", 13: "choose an output you can write to",
                30: "choose an output on a writable file system", 20: "a file stands where a folder is needed; "
                "choose another path", 17: "choose another path"}.get(exc.errno or 0, "check the path")
        print(f"replaytune {args.command}: error: {where}{why} ({hint})", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"replaytune {args.command}: {'terminated' if isinstance(exc, Terminated) else 'interrupted'}",
              file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130


if __name__ == "__main__":
    sys.exit(main())
