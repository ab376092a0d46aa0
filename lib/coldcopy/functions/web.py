"""The monitor's web functions: ``handle("<function>", event, context)`` → ``{statusCode, headers, body}``.

Each ``packages/monitor/<fn>/__main__.py`` calls ``handle`` with its own name; ``coldcopy serve``
calls those same ``main`` functions locally.  Settings come from the environment (project.yml's
``environment``), loaded once per process with the storage client and the parsed copies of what
it reads (each revalidated by a conditional GET), so no warm call downloads or parses more than
what changed.  ``/status``, ``/alerts``, ``/metrics`` and ``/recovery-time`` read the catalog's
digest (``core.catalog_digest``: aggregates whose size does not grow with the backups) and the
monitor state the tick stores (the newest runs, the WAL summary and the alert notifier's state:
``core.monitor_state``; its age is in each answer); ``/backups`` (every page, every kind; the
dashboard's too) reads the catalog's page index and only the monthly pages its answer comes from
(``core.catalog_pages``).  All are stored by every catalog writer and repaired by the tick, so
neither the CPU nor the cold start of a call grows with the history.  Each also lists the journal
from its watermark (one request): while the journal holds records they have not applied, a page is
missing (a bucket from before pages, a lost object), or, for ``/recovery-time``, a point-in-time
target is older than the base backups the digest keeps, they read catalog.json itself, and the
answer is the same.  ``/health`` reads the digest and one page of the journal listing, never
catalog.json; ``/runs/<id>`` one GET of the run's record.  No call lists the run records, the WAL
archive or the verifications: the number of requests does not grow with the history.

Nothing here lets an exception escape: bad input is a 4xx, a server-side problem a JSON 5xx, and
tracebacks go to the function's log only.  Heavy modules (pg8000, zstandard, cryptography) are
never imported on this path, and each function is a process of its own that serves one endpoint:
a module only some endpoints need (mail, the queue, the launchers, the page) is imported by their
handlers, so that a cold start loads what its endpoint uses and no more.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from coldcopy.api.protocol import (
    BY_FUNCTION,
    HTML_TYPE,
    PROMETHEUS_TYPE,
    HttpError,
    Request,
    authorize,
    check_method,
    decode_cursor,
    encode_cursor,
    error_response,
    json_response,
    kind_param,
    limit_param,
    parse_event,
    path_arg,
    queued_view,
    text_response,
)
from coldcopy.changes.health import load_health
from coldcopy.config import STORAGE, Settings, missing, read_settings, redact
from coldcopy.core.archive_report import WalHealth
from coldcopy.core.monitor_state import MonitorState, freshness
from coldcopy.core.names import validate_name
from coldcopy.core.times import Clock, iso, utc_now
from coldcopy.core.views import listing_row, status_from_digest
from coldcopy.errors import ColdCopyError, InvalidNameError, NotFoundError, StorageError
from coldcopy.storage.catalog_store import CatalogStore
from coldcopy.storage.state_store import load_monitor_state
from coldcopy.storage.store import ObjectStore

log = logging.getLogger(__name__)


# -- per-process state ----------------------------------------------------------------------------
@dataclass
class _Config:
    settings: Settings  # malformed values left at their defaults (``problems`` names them)
    problems: list[str]  # variable names that stop the storage from working
    token: str


@dataclass
class _Backend:
    settings: Settings
    storage: ObjectStore
    catalog: CatalogStore


_lock = threading.Lock()
_override: Settings | None = None
_config: _Config | None = None
_backend: _Backend | None = None
_clock: Clock = utc_now


def use_settings(settings: Settings | None, clock: Clock = utc_now) -> None:
    """Serve with these settings instead of the environment (``coldcopy serve`` with settings, tests),
    and with this clock."""
    global _override, _clock
    with _lock:
        _override, _clock = settings, clock
    reset()


def reset() -> None:
    """Forget the cached settings, storage client and catalog (the next call reloads them)."""
    global _config, _backend
    with _lock:
        _config, _backend = None, None


def _load_config() -> _Config:
    if _override is not None:
        return _Config(_override, missing(_override, STORAGE), _override.monitor_token.reveal())
    settings, problems = read_settings(need=(STORAGE,))
    if problems:
        log.error("the monitor's configuration is not usable: %s", "; ".join(problems))
    return _Config(settings, sorted({p.split(" ", 1)[0] for p in problems}), settings.monitor_token.reveal())


def _get_config() -> _Config:
    global _config
    with _lock:
        if _config is None:
            _config = _load_config()
        return _config


def _get_backend(cfg: _Config) -> _Backend:
    global _backend
    if cfg.problems:
        raise HttpError(
            503, "misconfigured", f"the server's storage settings are incomplete ({', '.join(cfg.problems)})"
        )
    with _lock:
        if _backend is None:
            # Imported at the first call that needs the bucket: boto3 is the slow import of a cold
            # start, and the dashboard's page needs none of it.
            from coldcopy.storage.s3 import open_store

            storage = open_store(cfg.settings)
            _backend = _Backend(cfg.settings, storage, CatalogStore(storage))
        return _backend


# -- handlers -------------------------------------------------------------------------------------
def _now() -> datetime:
    return _clock()


def _health(req: Request, cfg: _Config) -> dict[str, Any]:
    reachable, problem = False, None
    try:
        _get_backend(cfg).catalog.check_readable()  # the digest and a journal page, not catalog.json
        reachable = True
    except HttpError:
        problem = "storage settings are incomplete"
    except StorageError:
        problem = "storage is unreachable or refused the request"
    except ColdCopyError:
        problem = "the catalog could not be read"
    body = {
        "ok": reachable and bool(cfg.token),
        "catalog_reachable": reachable,
        "monitor_token_configured": bool(cfg.token),
        "checked_at": iso(_now()),
    }
    if problem:
        body["problem"] = problem
    return json_response(200 if reachable else 503, body)


def _wal_and_freshness(
    storage: ObjectStore, now: datetime, state: MonitorState | None = None
) -> tuple[WalHealth | None, dict[str, Any]]:
    """The WAL summary from the tick's monitor state (one GET, or ``state`` when the caller read
    it) and how old it is; before the first tick that stores one, the WAL summary alone (its own
    object, of unknown age)."""
    state = state or load_monitor_state(storage)
    if state is not None:
        return state.wal, freshness(state.computed_at, now)
    # Late import: only until the first tick (see the module docstring).
    from coldcopy.wal.monitor import load

    return load(storage), {**freshness(None, now), "source": "WAL summary (no monitor state yet)"}


def _status(req: Request, cfg: _Config) -> dict[str, Any]:
    b = _get_backend(cfg)
    s = b.settings
    now = _now()
    state = load_monitor_state(b.storage)  # also the tick's copy of the change archive's health
    wal, fresh = _wal_and_freshness(b.storage, now, state)
    d = b.catalog.current_digest()
    # Before the first tick stores its copy, the change archive's own health object (one GET).
    changes = state.changes if state is not None else load_health(b.storage)
    view = status_from_digest(
        d, now, encrypted=s.encrypted, wal=wal, thresholds=s.thresholds, changes=changes
    )
    return json_response(200, {**view, "state": fresh})


def _backups(req: Request, cfg: _Config) -> dict[str, Any]:
    limit = limit_param(req.param("limit"))
    kind = kind_param(req.param("kind"))
    after = decode_cursor(req.param("cursor"))
    got = _get_backend(cfg).catalog.listing(kind, limit, after)  # the index and the pages it needs
    body: dict[str, Any] = {
        "backups": [listing_row(e, v, got.files.get(e.name)) for e, v in got.rows],
        "count": len(got.rows),
        "total": got.total,
        "limit": limit,
        "kind": kind,
        "next_cursor": None,
        "links": {},
    }
    if got.next_key is not None:
        cursor = encode_cursor(got.next_key)
        body["next_cursor"] = cursor
        body["links"]["next"] = f"/backups?limit={limit}&cursor={cursor}" + (f"&kind={kind}" if kind else "")
    return json_response(200, body)


def _backup_name(req: Request, *, required: bool) -> str | None:
    name = path_arg(req, "name")
    if name is None:
        if required:
            raise HttpError(400, "missing_name", "give a backup name: /backup/<name> (see GET /backups)")
        return None
    return validate_name(name)


def _backup(req: Request, cfg: _Config) -> dict[str, Any]:
    name = _backup_name(req, required=True)
    assert name is not None
    catalog = _get_backend(cfg).catalog
    manifest = catalog.manifest(name)  # NotFoundError → 404
    files = catalog.files_of(manifest.entry())  # the one page of the catalog that holds it
    return json_response(200, {**manifest.to_dict(), "files_snapshot": files})


def _enqueue(cfg: _Config, kind: str, params: dict[str, Any]) -> dict[str, Any]:
    from coldcopy.ops.queue import enqueue  # this endpoint's own module

    b = _get_backend(cfg)
    name = params.get("name")
    if name is not None and name not in b.catalog.read_cached().backups:
        raise NotFoundError(f"no backup named {name}", "GET /backups lists the backups")
    run_id = enqueue(b.storage, kind, params)
    if run_id is None:  # only slot-keyed jobs are deduplicated; ours never are
        raise HttpError(409, "already_queued", "this job is already queued")
    woken, detail = _wake(b.settings)
    return json_response(202, queued_view(run_id, kind, woken, detail), {"Location": f"/runs/{run_id}"})


def _wake(settings: Settings) -> tuple[bool, str]:
    """Wake the runner (the tick's way, with short retries); a failure does not fail the request:
    the job is queued, and the next tick starts the run."""
    from coldcopy.ops.launchers import wake  # this endpoint's own module

    later = "the scheduler tick will start the run"
    try:
        summary = wake(settings, quick=True)
    except Exception:  # noqa: BLE001 - queued is queued; never fail the request over the wake-up
        log.exception("the run is queued but waking the runner failed unexpectedly")
        return False, f"the runner could not be woken now; {later}"
    if summary is None:
        return False, f"no launcher is configured (COLDCOPY_LAUNCHER=none); {later}"
    if summary.get("error"):
        log.warning("the run is queued but the runner could not be woken: %s", summary["error"])
        return False, f"the runner could not be woken now ({summary['error']}); {later}"
    return bool(summary.get("started")), str(summary.get("detail", ""))


def _verify(req: Request, cfg: _Config) -> dict[str, Any]:
    name = _backup_name(req, required=True)
    level = req.param("level")  # optional: checksum | full | restore (the job's default)
    if level in (None, ""):
        return _enqueue(cfg, "verify", {"name": name})
    if level not in ("checksum", "full", "restore"):
        raise HttpError(400, "bad_level", "'level' must be one of checksum, full, restore")
    return _enqueue(cfg, "verify", {"name": name, "level": level})


def _restore_test(req: Request, cfg: _Config) -> dict[str, Any]:
    name = _backup_name(req, required=False)
    return _enqueue(cfg, "restore-test", {"name": name} if name else {})


def _runs(req: Request, cfg: _Config) -> dict[str, Any]:
    from coldcopy.ops.queue import get_run  # this endpoint's own module

    run_id = path_arg(req, "run_id")
    if run_id is None:
        raise HttpError(400, "missing_run_id", "give a run id: /runs/<id> (POST /verify/<name> returns one)")
    run = get_run(_get_backend(cfg).storage, run_id)  # InvalidNameError → 400
    if run is None:
        raise NotFoundError(f"no run {run_id}")
    return json_response(200, run.to_dict())


def _metrics(req: Request, cfg: _Config) -> dict[str, Any]:
    # This endpoint's own module.
    from coldcopy.alerting.notify import metrics_text, stored_or_gathered

    b = _get_backend(cfg)
    now = _now()
    inputs, _ = stored_or_gathered(b.storage, now)
    d = b.catalog.current_digest(b.settings.thresholds.size_sample)
    return text_response(200, metrics_text(b.settings, d, inputs, now), PROMETHEUS_TYPE)


def _alerts(req: Request, cfg: _Config) -> dict[str, Any]:
    # This endpoint's own module.
    from coldcopy.alerting.notify import alerts_report, stored_or_gathered

    b = _get_backend(cfg)
    now = _now()
    inputs, from_tick = stored_or_gathered(b.storage, now)
    d = b.catalog.current_digest(b.settings.thresholds.size_sample)
    report = alerts_report(b.settings, d, inputs, now, from_tick=from_tick)
    return json_response(200, report)


def _recovery_time(req: Request, cfg: _Config) -> dict[str, Any]:
    from coldcopy.core.recovery_time import estimate, estimate_from  # this endpoint's own module

    b = _get_backend(cfg)
    now = _now()
    state = load_monitor_state(b.storage)  # also the tick's copy of the change archive's health
    wal, fresh = _wal_and_freshness(b.storage, now, state)
    changes = state.changes if state is not None else None
    d = b.catalog.read_digest()
    answer = None if d is None else estimate_from(d.recovery, now, wal, changes)
    if answer is None:  # the digest is behind the journal, or lacks a base backup a target needs
        answer = estimate(b.catalog.read_cached(), now, wal, changes)
    return json_response(200, {**answer, "state": fresh})


def _dashboard(req: Request, cfg: _Config) -> dict[str, Any]:
    from coldcopy.api.dashboard import page  # this endpoint's own module

    return text_response(200, page(), HTML_TYPE)


_Handler = Callable[[Request, _Config], dict[str, Any]]
HANDLERS: dict[str, _Handler] = {
    "health": _health,
    "status": _status,
    "backups": _backups,
    "backup": _backup,
    "verify": _verify,
    "metrics": _metrics,
    "alerts": _alerts,
    "restore-test": _restore_test,
    "recovery-time": _recovery_time,
    "runs": _runs,
    "dashboard": _dashboard,
}


# -- the entry point ------------------------------------------------------------------------------
def handle(function: str, event: Any, context: Any = None) -> dict[str, Any]:
    """Answer one web event (DigitalOcean ``http`` shape or OpenWhisk ``__ow_*`` shape)."""
    try:
        route = BY_FUNCTION.get(function)
        if route is None or function not in HANDLERS:
            raise HttpError(404, "not_found", "no such endpoint")
        req = parse_event(event)
        if route.arg is None and req.path.strip("/"):
            raise HttpError(404, "not_found", "no such endpoint")
        check_method(route, req.method)
        cfg = _get_config()
        if route.auth:
            authorize(req.headers, cfg.token)
        return HANDLERS[function](req, cfg)
    except HttpError as exc:
        return exc.response()
    except InvalidNameError as exc:
        return error_response(400, "invalid_name", _public(exc))
    except NotFoundError as exc:
        return error_response(404, "not_found", _public(exc))
    except StorageError as exc:
        log.error("%s: storage failed: %s", function, _public(exc))
        return error_response(
            503, "storage_unavailable", "the backup storage could not be read; try again later"
        )
    except ColdCopyError as exc:
        log.error("%s failed: %s", function, _public(exc))
        return error_response(500, "server_error", _public(exc))
    except Exception:  # noqa: BLE001 - last line of defence: JSON, no traceback to the caller
        log.exception("%s failed unexpectedly", function)
        return error_response(500, "internal", "internal error; the details are in the function log")


def _public(exc: ColdCopyError) -> str:
    """The error's message (never secrets by contract; redacted anyway) and what to do next."""
    cfg = _config
    text = exc.message + (f" ({exc.hint})" if exc.hint else "")
    return redact(text, cfg.settings if cfg else None)[:500]
