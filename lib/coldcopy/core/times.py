"""Times as ColdCopy writes them: ISO 8601 in UTC with a ``Z``, and the clock callers inject.  Pure."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

#: Where "now" comes from; a function parameter so that tests pass a fixed time.
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The real clock (the default ``Clock``)."""
    return datetime.now(UTC)


def iso(when: datetime) -> str:
    """``2026-11-24T02:00:00Z``: converted to UTC; a naive time is taken to be UTC already."""
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    return when.isoformat().replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    """The inverse of :func:`iso` (any ISO 8601 time with an offset or ``Z``)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def iso_from_timestamp(seconds: float) -> str:
    """:func:`iso` of a POSIX time."""
    return iso(datetime.fromtimestamp(seconds, UTC))
