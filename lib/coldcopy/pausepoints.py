"""Points where a fault test stops ColdCopy, to kill it exactly there (pgBackRest's test points are
the model).  ``COLDCOPY_PAUSE_AT=<point>@<file>``: on reaching ``<point>`` the process writes its
pid to ``<file>`` and waits for a signal.  A test that makes ``<file>`` a FIFO and reads it is woken
exactly when the point is reached (no polling).  Unset (always, in production), a point costs one string
comparison."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from coldcopy.config import Settings


def pause_point(settings: Settings, point: str) -> None:
    """Stop here until killed, when the fault test named this point."""
    if not settings.pause_at:
        return
    name, _, marker = settings.pause_at.partition("@")
    if name != point or not marker:
        return
    Path(marker).write_text(f"{os.getpid()}\n")
    while True:
        signal.pause()
