"""The change drain as a scheduled function: triggered every minute, it drains the slot every
``COLDCOPY_CHANGES_INTERVAL_SECONDS`` (15 by default) for about 50 seconds, so that a committed
transaction reaches the bucket within about one interval plus one drain.

The archive is optional: in a deployment where ``coldcopy changes setup`` never ran (no slot and
no stored health), each run answers ``{"status": "not set up"}`` and stores nothing; after
``coldcopy changes teardown`` (recorded in the health) it answers the same with ``torn_down_at``,
and raises no alert.  A slot that vanishes without a teardown is drained, fails, and alerts.

It must never raise to the platform: an error becomes an ``{"error": …}`` summary and a log line
(the drain has already written it into the archive's health, which the tick's alert check reads).
"""

from __future__ import annotations

import logging
from typing import Any

from coldcopy.changes.health import load_health
from coldcopy.changes.monitor import archive_in_use, archive_slot, drain_loop
from coldcopy.config import DB, STORAGE, Settings, load_settings, redact
from coldcopy.context import open_context
from coldcopy.errors import ColdCopyError

log = logging.getLogger("coldcopy.changes")
BUDGET_SECONDS = 50.0  # inside a one-minute trigger: the next run starts as this one ends


def run(event: Any = None, context: Any = None) -> dict[str, Any]:
    """The function entry point: ``(event, context)`` from the scheduled trigger."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings: Settings | None = None
    try:
        settings = load_settings(need=(DB, STORAGE))
        ctx = open_context(settings)
        if not archive_in_use(ctx):
            out: dict[str, Any] = {"status": "not set up", "slot": archive_slot(settings)}
            h = load_health(ctx.storage)
            if h is not None and h.torn_down_at:
                out["torn_down_at"] = h.torn_down_at
            return out
        return drain_loop(ctx, BUDGET_SECONDS)
    except ColdCopyError as exc:
        message = redact(str(exc), settings)
        log.error("change drain failed: %s", message)
        return {"error": {"code": type(exc).__name__, "message": message}}
    except Exception as exc:  # noqa: BLE001 - the platform must get a summary, never a traceback
        message = redact(f"{type(exc).__name__}: {exc}", settings)[:500]
        log.error("change drain failed unexpectedly: %s", message)
        return {"error": {"code": "internal", "message": message}}
