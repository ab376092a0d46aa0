"""Recovery-time estimates from measured test restores.  Pure: no I/O.

Every test restore (``coldcopy verify --level full|restore``) records its restore time and
throughput (bytes of dump restored per second) in the verification record.  An estimate takes the
median throughput of the newest measurements and scales it by the size of the backup that would be
restored; it says which measurements it used and how old they are.  Without measurements it says so
and uses a labelled default throughput.  Point-in-time scenarios need a base backup and a WAL
archive with a recoverable window (``WalHealth``, from ``coldcopy.wal.monitor.load``): restoring the
base backup plus replaying the WAL written since.  Base-backup drills
(``coldcopy.verify.base_drill``) measure both: the restore throughput of the tar and the WAL replay
rate (bytes replayed from the backup's start LSN to the LSN reached, over the seconds from start to
promotion). Without drills the base backup restores at the dump throughput and WAL replays at a
labelled ASSUMED rate.  The WAL volume per hour is measured from the archive
(``archive_report.wal_rate``: the widest base backup window's segments over its hours) once a window
spans an hour; before that it is a labelled assumption.  Without a window the scenarios are reported
as not available, never invented.

Point-in-time recovery from the change archive (``ChangesHealth``, from ``coldcopy.changes.health``)
restores a dump and replays the archive from it: logical PITR drills (``coldcopy.verify.pitr_drill``)
measure the replay in transactions per second and in seconds of the archive's history covered per
second of replay, which the estimate divides the history since the dump by; without a drill it is
a labelled assumption of replaying as fast as the changes were written.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from coldcopy.core.archive_report import WalHealth
from coldcopy.core.catalog import Catalog
from coldcopy.core.changes import ChangesHealth
from coldcopy.core.manifest import CatalogEntry
from coldcopy.core.names import LOGICAL_KINDS
from coldcopy.core.recovery_inputs import (
    FINISH_SLACK,
    MAX_MEASUREMENTS,
    MIN_REPLAY_BYTES,
    WEEK,
    BackupRef,
    Measurement,
    RecoveryInputs,
    measurements,
    recovery_inputs,
)
from coldcopy.core.replay import stream_time
from coldcopy.core.times import iso, parse_iso

DEFAULT_THROUGHPUT = 10_000_000  # bytes of dump per second: an assumption, used only without measurements
PROVISION_SECONDS = 1800  # a new PostgreSQL server, network access and ColdCopy's settings (assumption)
PITR_UNAVAILABLE = (
    "not available: no base backups/WAL archive (point-in-time recovery arrives with physical backups)"
)
# Labelled assumptions wherever they are used: the WAL volume until the archive spans an hour, the
# replay rate until a drill.
ASSUMED_WAL_BYTES_PER_HOUR = 1_000_000_000  # WAL the server writes per hour
ASSUMED_REPLAY_RATE = 100_000_000  # bytes of WAL replayed per second
ASSUMED_HISTORY_PER_REPLAY_SECOND = 1.0  # the change archive replays as fast as it was written


@dataclass(frozen=True)
class Throughput:
    """A rate (restore throughput or WAL replay), with how it was reached and how old it is."""

    bytes_per_second: float
    measured: bool
    basis: str
    used: tuple[Measurement, ...] = ()
    newest_at: str | None = None
    age_seconds: float | None = None


def replay_rate(cat: Catalog, now: datetime) -> Throughput:
    """Bytes of WAL replayed per second, from the newest drills; the labelled assumption without one."""
    return _replay_rate(recovery_inputs(cat), now)


def _replay_rate(inputs: RecoveryInputs, now: datetime) -> Throughput:
    """Total bytes over total seconds rather than a median: a drill that replays little is dominated
    by the server's start-up, and weighting by bytes keeps it from dragging the rate down."""
    found = list(inputs.drills)
    if not found:
        why = (
            f"the {inputs.drill_count} drill(s) so far replayed under {MIN_REPLAY_BYTES >> 20} MB each: "
            "their time is mostly the server's start-up, not replay"
            if inputs.drill_count
            else "no base-backup drill yet: `coldcopy verify BASE_BACKUP --level restore`"
        )
        return Throughput(
            ASSUMED_REPLAY_RATE,
            False,
            f"an ASSUMED {ASSUMED_REPLAY_RATE / 1e6:.0f} MB/s of WAL replay; not measured ({why})",
        )
    replayed, seconds = sum(m.raw_bytes for m in found), sum(m.seconds for m in found)
    rate = replayed / seconds
    return _measured(
        rate,
        found,
        now,
        f"the measured WAL replay of the {len(found)} newest base-backup drill(s): {replayed / 1e6:.1f} MB "
        f"in {seconds:.1f} s = {rate / 1e6:.2f} MB/s",
    )


def base_throughput(cat: Catalog, now: datetime) -> Throughput:
    """How fast a base backup restores: measured by drills, else the dump throughput (labelled)."""
    return _base_throughput(recovery_inputs(cat), now)


def _base_throughput(inputs: RecoveryInputs, now: datetime) -> Throughput:
    if not inputs.bases:
        dump = _throughput(inputs, now)
        return replace(dump, basis=f"{dump.basis} (no base-backup drill yet: the dump rate stands in)")
    return _median(list(inputs.bases), now, "base-backup drill(s)", "tar")


def throughput(cat: Catalog, now: datetime) -> Throughput:
    """How fast a dump restores: the median of the newest test restores, else a labelled default."""
    return _throughput(RecoveryInputs(dumps=tuple(measurements(cat)[:MAX_MEASUREMENTS])), now)


def _throughput(inputs: RecoveryInputs, now: datetime) -> Throughput:
    if not inputs.dumps:
        return Throughput(
            DEFAULT_THROUGHPUT,
            False,
            f"no test restores measured yet: assumed default of {DEFAULT_THROUGHPUT / 1e6:.0f} MB/s of dump "
            "(run `coldcopy verify NAME --level restore` to measure)",
        )
    return _median(list(inputs.dumps), now, "test restore(s)", "dump")


def _median(found: list[Measurement], now: datetime, what: str, of: str) -> Throughput:
    """The median throughput of ``found`` (newest first), labelled with its measurements' age."""
    rate = statistics.median(m.throughput for m in found)
    return _measured(
        rate,
        found,
        now,
        f"median throughput of the {len(found)} newest {what}: {rate / 1e6:.2f} MB/s of {of}",
    )


def _measured(rate: float, found: list[Measurement], now: datetime, basis: str) -> Throughput:
    """A measured rate, its basis labelled with the age of the newest of ``found`` (newest first)."""
    newest = found[0].at
    age = (now - parse_iso(newest)).total_seconds()
    return Throughput(
        rate, True, f"{basis} (newest {newest}, {age / 3600:.1f} h old)", tuple(found), newest, age
    )


def restore_seconds(raw_bytes: int, rate: Throughput) -> float:
    """The time to restore ``raw_bytes`` at ``rate``."""
    return round(raw_bytes / rate.bytes_per_second, 1) if rate.bytes_per_second > 0 else 0.0


def latest_backup(cat: Catalog) -> CatalogEntry | None:
    """The newest full backup, else the newest logical backup of any kind."""
    entries = [e for e in cat.entries() if e.kind in LOGICAL_KINDS]
    full = [e for e in entries if e.kind == "full"]
    chosen = full or entries
    return chosen[0] if chosen else None


def base_for(cat: Catalog, target: datetime) -> CatalogEntry | None:
    """The newest base backup that finished before ``target``.

    ``finished_at`` is when its manifest was committed, moments after the stop time recovery can
    start from, and window ends are storage times in whole seconds: a couple of seconds of slack
    keep a backup taken just before the window's end from looking too new.  (`coldcopy pitr`
    plans from the manifests' stop times and has the last word.)
    """
    for e in cat.entries("base"):
        if parse_iso(e.finished_at) <= target + FINISH_SLACK:
            return e
    return None


def in_window(wal: WalHealth | None, target: datetime) -> bool:
    """Whether ``target`` lies in the WAL archive's recoverable window."""
    if wal is None or not wal.window_start or not wal.window_end:
        return False
    return parse_iso(wal.window_start) <= target <= parse_iso(wal.window_end)


def pitr_estimate(cat: Catalog, now: datetime, wal: WalHealth | None, target: datetime) -> dict[str, Any]:
    """Restore the base backup that fits ``target``, then replay the WAL up to it.

    Returns ``available``, ``estimate_seconds``, ``how`` and, when available, ``backup``/``target``
    and how the replay rate was reached (``replay_measured``, ``replay_bytes_per_second``).
    """
    return _pitr_estimate(recovery_inputs(cat), now, wal, target)


def _pitr_estimate(
    inputs: RecoveryInputs, now: datetime, wal: WalHealth | None, target: datetime
) -> dict[str, Any]:
    if wal is None or not wal.window_start or not wal.window_end:
        if wal is not None and inputs.base_backups:
            how = "not available: no base backup has a gap-free WAL archive after it (`coldcopy wal-status`)"
            return {"available": False, "estimate_seconds": None, "how": how}
        return {"available": False, "estimate_seconds": None, "how": PITR_UNAVAILABLE}
    if not in_window(wal, target):
        return {
            "available": False,
            "estimate_seconds": None,
            "how": f"not available: {iso(target)} is outside the recoverable window "
            f"{wal.window_start} .. {wal.window_end}",
        }
    base = inputs.base_for(target)
    if base is None:
        return {
            "available": False,
            "estimate_seconds": None,
            "how": f"not available: no base backup in the catalog finished before {iso(target)}",
        }
    rate, replay_at = _base_throughput(inputs, now), _replay_rate(inputs, now)
    hours = max((target - parse_iso(base.finished_at)).total_seconds(), 0.0) / 3600
    per_hour = wal.wal_bytes_per_hour or ASSUMED_WAL_BYTES_PER_HOUR
    wal_basis = (
        wal.wal_rate_basis
        if wal.wal_bytes_per_hour and wal.wal_rate_basis
        else f"ASSUMED {ASSUMED_WAL_BYTES_PER_HOUR / 1e9:.0f} GB of WAL per hour; no hour-long window yet"
    )
    wal_bytes = round(hours * per_hour)
    restore = restore_seconds(base.raw_size_bytes, rate)
    replay = round(wal_bytes / replay_at.bytes_per_second, 1)
    return {
        "available": True,
        "estimate_seconds": round(restore + replay, 1),
        "backup": base.name,
        "backup_raw_bytes": base.raw_size_bytes,
        "target": iso(target),
        "restore_seconds": restore,
        "replay_seconds": replay,
        "wal_bytes": wal_bytes,
        "wal_rate_measured": bool(wal.wal_bytes_per_hour),
        "replay_bytes_per_second": round(replay_at.bytes_per_second, 1),
        "replay_measured": replay_at.measured,
        "how": f"restore {base.raw_size_bytes} bytes of base backup {base.name} at {rate.basis}; then replay "
        f"{hours:.1f} h of WAL ≈ {wal_bytes / 1e6:.0f} MB ({wal_basis}) at {replay_at.basis}",
    }


# -- point-in-time recovery from the change archive -------------------------------------------------
@dataclass(frozen=True)
class LogicalReplay:
    """How fast the change archive replays: seconds of history per second, and transactions/s."""

    history_per_second: float
    transactions_per_second: float | None
    measured: bool
    basis: str


def logical_replay(cat: Catalog, now: datetime) -> LogicalReplay:
    """The change archive's replay speed, from the newest logical PITR drills (or the assumption)."""
    return _logical_replay(recovery_inputs(cat), now)


def _logical_replay(inputs: RecoveryInputs, now: datetime) -> LogicalReplay:
    """Totals over the newest drills (as the WAL replay's): a drill that replayed little counts little."""
    drills = inputs.pitr_drills
    if not drills:
        return LogicalReplay(
            ASSUMED_HISTORY_PER_REPLAY_SECOND,
            None,
            False,
            "an ASSUMED replay as fast as the changes were written; not measured (no logical PITR drill "
            "yet: the weekly verification or POST /restore-test runs one)",
        )
    tx, secs = sum(d.transactions for d in drills), sum(d.seconds for d in drills)
    history = sum(d.history_seconds for d in drills)
    age = (now - parse_iso(drills[0].at)).total_seconds() / 3600
    return LogicalReplay(
        history / secs,
        tx / secs,
        True,
        f"the measured replay of the {len(drills)} newest logical PITR drill(s): {tx} transactions in "
        f"{secs:.1f} s = {tx / secs:.1f} transactions/s, {history / secs:.1f} s of history per second "
        f"(newest {drills[0].at}, {age:.1f} h old)",
    )


def archive_window(changes: ChangesHealth | None) -> tuple[datetime, datetime] | None:
    """(start, newest archived commit) of the change archive's window; None when it has none (not
    set up, no logical backup since it (re)started)."""
    if changes is None or not changes.window_start or not (changes.newest_commit_at or changes.window_end):
        return None
    newest = (
        stream_time(changes.newest_commit_at)
        if changes.newest_commit_at
        else parse_iso(str(changes.window_end))
    )
    return parse_iso(changes.window_start), newest


def logical_pitr_estimate(
    cat: Catalog, now: datetime, changes: ChangesHealth | None, target: datetime, dump: CatalogEntry | None
) -> dict[str, Any]:
    """Restore ``dump`` (the newest logical backup before ``target``), then replay the change
    archive from it up to ``target``; as ``pitr_estimate``."""
    ref = None if dump is None else BackupRef(dump.name, dump.finished_at, dump.raw_size_bytes)
    return _logical_pitr_estimate(recovery_inputs(cat), now, changes, target, ref)


def _logical_pitr_estimate(
    inputs: RecoveryInputs,
    now: datetime,
    changes: ChangesHealth | None,
    target: datetime,
    dump: BackupRef | None,
) -> dict[str, Any]:
    window = archive_window(changes)
    if window is None:
        return {
            "available": False,
            "estimate_seconds": None,
            "how": "not available: the change archive has no window (no logical backup since it started)",
        }
    if not window[0] <= target <= window[1]:
        return {
            "available": False,
            "estimate_seconds": None,
            "how": f"not available: {iso(target)} is outside the change archive's window "
            f"{iso(window[0])} .. {iso(window[1])}",
        }
    if dump is None:
        return {"available": False, "estimate_seconds": None, "how": "not available: no logical backup"}
    rate, speed = _throughput(inputs, now), _logical_replay(inputs, now)
    history = max((target - parse_iso(dump.finished_at)).total_seconds(), 0.0)
    restore = restore_seconds(dump.raw_size_bytes, rate)
    replay = round(history / speed.history_per_second, 1)
    return {
        "available": True,
        "estimate_seconds": round(restore + replay, 1),
        "backup": dump.name,
        "target": iso(target),
        "restore_seconds": restore,
        "replay_seconds": replay,
        "history_seconds": round(history, 1),
        "replay_measured": speed.measured,
        "replay_transactions_per_second": None
        if speed.transactions_per_second is None
        else round(speed.transactions_per_second, 1),
        "how": f"restore {dump.raw_size_bytes} bytes of dump {dump.name} at {rate.basis}; then replay "
        f"{history / 3600:.1f} h of the change archive at {speed.basis}",
    }


def _logical_scenario(inputs: RecoveryInputs, now: datetime, changes: ChangesHealth) -> dict[str, Any]:
    """Point-in-time recovery from the change archive to its newest archived commit."""
    window = archive_window(changes)
    target = window[1] if window else now
    return {
        "scenario": "pitr-logical-now",
        "title": "point-in-time recovery from the change archive to its newest commit",
        **_logical_pitr_estimate(inputs, now, changes, target, inputs.latest),
    }


def _logical_view(r: LogicalReplay) -> dict[str, Any]:
    return {
        "measured": r.measured,
        "history_per_replay_second": round(r.history_per_second, 2),
        "transactions_per_second": None
        if r.transactions_per_second is None
        else round(r.transactions_per_second, 1),
        "basis": r.basis,
    }


def estimate(
    cat: Catalog, now: datetime, wal: WalHealth | None = None, changes: ChangesHealth | None = None
) -> dict[str, Any]:
    """Every scenario's estimate, with how it was reached (the `recovery-time` and API answer).

    ``wal`` is the WAL archive's summary (``coldcopy.wal.monitor.load``); None means PITR is not in use.
    ``changes`` is the change archive's health; None means it is not in use.
    """
    out = estimate_from(recovery_inputs(cat), now, wal, changes)
    assert out is not None  # every base backup is in the inputs
    return out


def pitr_targets(now: datetime, wal: WalHealth | None) -> list[tuple[str, str, datetime]]:
    """The point-in-time scenarios: recovery to now and to a week ago (key, title, target)."""
    # "Now" is as far as the archive reaches: the window's end (later changes are not archived yet).
    latest_recoverable = parse_iso(wal.window_end) if wal is not None and wal.window_end else now
    return [
        ("pitr-now", "point-in-time recovery to now", min(latest_recoverable, now)),
        ("pitr-week-ago", "point-in-time recovery to a week ago", now - WEEK),
    ]


def estimate_from(
    inputs: RecoveryInputs, now: datetime, wal: WalHealth | None = None, changes: ChangesHealth | None = None
) -> dict[str, Any] | None:
    """``estimate`` from the catalog's inputs (the digest's: ``core.recovery_inputs``); None when
    they do not hold the base backup a point-in-time target needs (estimate from the catalog)."""
    targets = pitr_targets(now, wal)
    if not all(inputs.answers(target) for _, _, target in targets):
        return None
    rate = _throughput(inputs, now)
    restore = _restore_scenario(inputs.latest, rate)
    pitr = [
        {"scenario": k, "title": t, **_pitr_estimate(inputs, now, wal, target)} for k, t, target in targets
    ]
    logical = [] if changes is None else [_logical_scenario(inputs, now, changes)]
    scenarios = [restore, *pitr, *logical, _disaster_scenario(restore)]
    out: dict[str, Any] = {
        "estimated": rate.measured,
        "estimate_seconds": restore["estimate_seconds"],
        "basis": rate.basis,
        "throughput_bytes_per_second": round(rate.bytes_per_second, 1),
        "measured_at": rate.newest_at,
        "measurement_age_seconds": None if rate.age_seconds is None else round(rate.age_seconds, 1),
        "measurements": [_measurement_view(m) for m in rate.used],
        "scenarios": scenarios,
        "replay": _replay_view(_replay_rate(inputs, now)),
        "wal_window": None
        if wal is None
        else {"start": wal.window_start, "end": wal.window_end, "gaps": len(wal.gaps)},
        "checked_at": iso(now),
    }
    if changes is not None:
        out["logical_replay"] = _logical_view(_logical_replay(inputs, now))
    if not rate.measured:
        out["reason"] = "no test restores measured yet; the figures use a labelled default throughput"
        out["how_to_measure"] = "`coldcopy verify NAME --level restore` or POST /restore-test"
    return out


def _restore_scenario(latest: BackupRef | None, rate: Throughput) -> dict[str, Any]:
    """Restoring the latest full backup at ``rate``."""
    if latest is None:
        return {
            "scenario": "restore-latest",
            "title": "restore the latest full backup",
            "available": False,
            "estimate_seconds": None,
            "how": "not available: there is no backup to restore",
        }
    return {
        "scenario": "restore-latest",
        "title": "restore the latest full backup",
        "available": True,
        "estimate_seconds": restore_seconds(latest.raw_size_bytes, rate),
        "backup": latest.name,
        "backup_raw_bytes": latest.raw_size_bytes,
        "how": f"{latest.raw_size_bytes} bytes of dump in {latest.name} at {rate.basis}",
    }


def _disaster_scenario(restore: dict[str, Any]) -> dict[str, Any]:
    """Provisioning a new server, then the ``restore`` scenario."""
    disaster: dict[str, Any] = {
        "scenario": "disaster-new-server",
        "title": "complete disaster: restore onto a new server",
        "available": restore["available"],
        "estimate_seconds": None,
        "how": restore["how"],
    }
    if restore["available"]:
        disaster["estimate_seconds"] = round(PROVISION_SECONDS + restore["estimate_seconds"], 1)
        disaster["backup"] = restore["backup"]
        disaster["how"] = (
            f"{PROVISION_SECONDS // 60} min to provision a server and set ColdCopy up (assumed) + "
            f"the restore: {restore['how']}"
        )
    return disaster


def _measurement_view(m: Measurement) -> dict[str, Any]:
    return {
        "name": m.name,
        "at": m.at,
        "raw_bytes": m.raw_bytes,
        "restore_seconds": m.seconds,
        "throughput_bytes_per_second": round(m.throughput, 1),
    }


def _replay_view(r: Throughput) -> dict[str, Any]:
    return {
        "measured": r.measured,
        "bytes_per_second": round(r.bytes_per_second, 1),
        "basis": r.basis,
        "measured_at": r.newest_at,
        "age_seconds": None if r.age_seconds is None else round(r.age_seconds, 1),
        "drills": [
            {"name": m.name, "at": m.at, "replay_bytes": m.raw_bytes, "replay_seconds": m.seconds}
            for m in r.used
        ],
    }
