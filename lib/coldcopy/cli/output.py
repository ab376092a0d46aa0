"""How the CLI speaks: one presenter for JSON or human text, progress lines, and logging that cannot
leak secrets."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from coldcopy.config import Settings, redact


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def present(args: argparse.Namespace, data: Any, human: Callable[[], str] | str) -> None:
    """The one place that decides how a result is shown: ``data`` as JSON with ``--json``, else the
    text ``human`` gives (a string, or a function making it: only called when text is wanted)."""
    if args.json:
        emit_json(data)
        return
    text = human() if callable(human) else human
    if text:
        print(text)


class RateMeter:
    """Formats a progress line at most every ``interval`` seconds."""

    def __init__(self, write: Callable[[str], None], interval: float = 0.5) -> None:
        self.write, self.interval = write, interval
        self.start = self._last = time.monotonic()

    def __call__(self, raw: int, stored: int) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        rate = raw / max(now - self.start, 1e-6)
        self.write(f"\r  {raw / 1e6:,.1f} MB read, {stored / 1e6:,.1f} MB stored, {rate / 1e6:,.1f} MB/s   ")


@contextlib.contextmanager
def progress_meter(args: argparse.Namespace) -> Iterator[RateMeter | None]:
    """A progress line on stderr while a stream runs, for people at a terminal (never with --json)."""
    if args.json or not sys.stderr.isatty():
        yield None
        return

    def show(line: str) -> None:
        sys.stderr.write(line)
        sys.stderr.flush()

    try:
        yield RateMeter(show)
    finally:
        sys.stderr.write("\n")


class RedactingFilter(logging.Filter):
    """Replaces every configured secret in a log record's final text."""

    def __init__(self) -> None:
        super().__init__()
        self.settings: Settings | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if self.settings is not None:
            record.msg = redact(record.getMessage(), self.settings)
            record.args = None
        return True


REDACTOR = RedactingFilter()


class PlainFormatter(logging.Formatter):
    """A record's message alone, never a traceback: libraries log warnings with ``exc_info``
    (urllib3 when a reply's headers are cut short) that are for ``--debug`` only."""

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def setup_logging(debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if debug:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(PlainFormatter("%(message)s"))
    handler.addFilter(REDACTOR)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("coldcopy").setLevel(logging.DEBUG if debug else logging.INFO)
    # botocore's debug logs print request headers and signatures: never at debug level.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
