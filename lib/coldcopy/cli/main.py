"""The ``coldcopy`` command line: parse (:mod:`coldcopy.cli.parser`), run the command's handler, and
turn what went wrong into a message, a hint and an exit code."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator

from coldcopy.cli.output import REDACTOR, setup_logging
from coldcopy.cli.parser import build_parser
from coldcopy.config import redact
from coldcopy.errors import ColdCopyError

Handler = Callable[[argparse.Namespace], int]


def handler_of(args: argparse.Namespace) -> Handler:
    """The function that runs the parsed command (``"<module>:<function>"`` in coldcopy.cli).

    Imported here, when the command runs: a command pays only for what it uses (``wal-fetch`` runs
    once per WAL segment during recovery, and must not load pg8000, requests or docker)."""
    module, _, name = str(args.handler).partition(":")
    fn: Handler = getattr(importlib.import_module(f"coldcopy.cli.{module}"), name)
    return fn


class Terminated(BaseException):
    """SIGTERM (a stopped worker, `kill`, tini forwarding a shutdown), raised like KeyboardInterrupt."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM unwinds the stack instead of ending the process on the spot, so every ``finally``
    runs: a drill's scratch server is stopped and its folder (a copy of the data, the storage
    secrets) removed, the volumes of an unfinished backup deleted, an in-flight marker dropped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.debug)
    try:
        with _sigterm_unwinds():
            return handler_of(args)(args)
    except Terminated:
        print("terminated (SIGTERM); cleaned up", file=sys.stderr)
        return 143
    except ColdCopyError as exc:
        print(f"error: {redact(str(exc), REDACTOR.settings)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - last line of defence: a clear message, no secrets
        if args.debug:
            print(redact(traceback.format_exc(), REDACTOR.settings), file=sys.stderr)
        print(
            f"error: unexpected {type(exc).__name__}: {redact(str(exc), REDACTOR.settings)[:500]}\n"
            "  → run again with --debug for details",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
