"""Disaster-recovery runbooks computed from the bucket's real state.  Pure: no I/O.

``build_plan(scenario, cat, facts, now, before=, on_date=, wal=)`` picks the backup that fits, fills
the exact ``coldcopy`` commands in with real names, and says how long it should take, how much data
would be lost, what to check afterwards and what would make the plan fail.  With a WAL archive
whose recoverable window covers the time needed (``wal``, from ``coldcopy.wal.monitor.load``), a
deletion is undone by point-in-time recovery to just before it, and corruption/disaster plans name
PITR as the option with the smallest data loss.  With a change archive whose window covers the time
(``changes``, the archive's health from ``coldcopy.changes.health``), a deletion is undone by
``coldcopy pitr --target-time`` into a new database and the lost rows are copied back, and
corruption/disaster plans offer PITR to the newest archived commit, with the data-loss window the
archive's state gives.  The alert rules' plan names (``missed-backup``, ``corrupt-backup``…) map
onto the four runbooks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from coldcopy.core.archive_report import WalHealth
from coldcopy.core.catalog import Catalog
from coldcopy.core.changes import ChangesHealth
from coldcopy.core.manifest import CatalogEntry
from coldcopy.core.names import LOGICAL_KINDS
from coldcopy.core.plan_names import ALIASES, SCENARIOS
from coldcopy.core.recovery_time import (
    PITR_UNAVAILABLE,
    PROVISION_SECONDS,
    archive_window,
    base_for,
    in_window,
    logical_pitr_estimate,
    pitr_estimate,
    restore_seconds,
    throughput,
)
from coldcopy.core.times import iso, parse_iso
from coldcopy.core.verification import PITR_LEVEL

PITR_PORT = 5433  # the recovered server runs beside the live one
PITR_FRESH_SECONDS = 3600  # a window ending this close to now counts as "PITR to now"


@dataclass(frozen=True)
class Facts:
    """What the plan needs to know besides the catalog (the I/O wrapper fills it in)."""

    db_name: str
    key_id: str | None  # of the configured BACKUP_ENCRYPTION_KEY, None when unset
    compliance_retention_days: int = 365
    erasures: int = 0  # records in the erasure ledger (docs/erasures.md)


@dataclass
class Runbook:
    """A disaster-recovery plan: the backup, the commands, the estimate, the data-loss window, the checks."""

    scenario: str
    title: str
    backup: dict[str, Any] | None
    first: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    estimate: dict[str, Any] = field(default_factory=dict)
    data_loss: dict[str, Any] = field(default_factory=dict)
    after: list[str] = field(default_factory=list)
    risks: list[str] = field(default_factory=list)
    blockers: list[str] = field(default_factory=list)  # why the plan cannot work as it stands
    alert: str | None = None

    @property
    def ok(self) -> bool:
        return not self.blockers

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def _stamp(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y%m%d_%H%M")


def _dump_verification(cat: Catalog, name: str) -> dict[str, Any] | None:
    """The backup's latest verification of the dump itself.  A logical PITR drill's record (level
    ``pitr``) is about the change archive too, so the test restore it carries forward stands in."""
    v = cat.verifications.get(name)
    if not v or v.get("level") != PITR_LEVEL:
        return v
    proof = v.get("restore_proof")
    if not isinstance(proof, dict):
        return None
    level = "restore" if proof.get("restore_level_at") else proof.get("level")
    return {"at": proof.get("at"), "level": level, "ok": proof.get("ok")}


def _verification(cat: Catalog, name: str) -> dict[str, Any] | None:
    v = _dump_verification(cat, name)
    return {"at": v.get("at"), "level": v.get("level"), "ok": v.get("ok")} if v else None


def _verified(cat: Catalog, name: str) -> bool:
    return bool((_dump_verification(cat, name) or {}).get("ok"))


def _backup_view(cat: Catalog, e: CatalogEntry) -> dict[str, Any]:
    return {
        "name": e.name,
        "kind": e.kind,
        "created_at": e.created_at,
        "finished_at": e.finished_at,
        "raw_size_bytes": e.raw_size_bytes,
        "encrypted": e.encrypted,
        "key_id": e.key_id,
        "verification": _verification(cat, e.name),
    }


def _pick(cat: Catalog, not_after: datetime | None, prefer_verified: bool) -> CatalogEntry | None:
    entries = [e for e in cat.entries() if e.kind in LOGICAL_KINDS]
    if not_after is not None:
        entries = [e for e in entries if parse_iso(e.created_at) <= not_after]
    if prefer_verified:
        verified = [e for e in entries if _verified(cat, e.name)]
        if verified:
            return verified[0]
    return entries[0] if entries else None


def _common(
    plan: Runbook,
    cat: Catalog,
    facts: Facts,
    e: CatalogEntry | None,
    now: datetime,
    wal: WalHealth | None = None,
    changes: ChangesHealth | None = None,
) -> None:
    """Backup, key and verification checks, the estimate and the data-loss window."""
    if e is None:
        plan.blockers.append("no backup fits: there is nothing to restore")
        return
    plan.backup = _backup_view(cat, e)
    if e.encrypted and facts.key_id is None:
        plan.blockers.append(
            f"BACKUP_ENCRYPTION_KEY is not set but {e.name} is encrypted (key id {e.key_id})"
        )
    elif e.encrypted and e.key_id and facts.key_id != e.key_id:
        plan.blockers.append(
            f"the configured BACKUP_ENCRYPTION_KEY has key id {facts.key_id} but {e.name} needs key id "
            f"{e.key_id}: find that passphrase first"
        )
    drill = cat.verifications.get(e.name) or {}
    if drill.get("level") == PITR_LEVEL and not drill.get("ok"):
        plan.risks.append(
            f"the last PITR drill from {e.name} FAILED ({drill.get('at')}): a replay of the change "
            "archive from it may fail; see why with `coldcopy list-backups` before relying on it"
        )
    v = _dump_verification(cat, e.name)
    if not v:
        plan.risks.append(f"{e.name} was never verified: verify it before relying on it (first command)")
    elif not v.get("ok"):
        plan.blockers.append(
            f"the last verification of {e.name} FAILED ({v.get('at')}): choose another backup"
        )
    elif v.get("level") != "restore":
        plan.risks.append(f"{e.name} was verified at level {v.get('level')}, not by a test restore")
    if not any(_verified(cat, x.name) for x in cat.entries() if x.kind in LOGICAL_KINDS):
        plan.risks.append("no backup in the bucket has a successful verification")
    if (wal is None or not wal.window_start or not wal.window_end) and archive_window(changes) is None:
        plan.risks.append(f"point-in-time recovery is {PITR_UNAVAILABLE}")
    rate = throughput(cat, now)
    plan.estimate = {
        "seconds": restore_seconds(e.raw_size_bytes, rate),
        "basis": rate.basis,
        "measured": rate.measured,
    }


def _loss(plan: Runbook, e: CatalogEntry | None, until: datetime, what: str) -> None:
    if e is None:
        return
    since = parse_iso(e.created_at)
    secs = max((until - since).total_seconds(), 0.0)
    plan.data_loss = {
        "from": e.created_at,
        "to": iso(until),
        "seconds": round(secs),
        "text": f"changes after {e.created_at} (the backup's snapshot) up to {what} are not in the backup "
        f"({secs / 3600:.1f} h)",
    }


def build_plan(
    scenario: str,
    cat: Catalog,
    facts: Facts,
    now: datetime,
    *,
    before: datetime | None = None,
    on_date: date | None = None,
    wal: WalHealth | None = None,
    changes: ChangesHealth | None = None,
) -> Runbook:
    """The runbook of ``scenario`` (or of an alert's plan name) from the catalog, the WAL archive
    and the change archive."""
    alert = None
    if scenario in ALIASES:
        alert = scenario
        scenario, hint = ALIASES[scenario]
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown plan {scenario!r}: one of {', '.join(SCENARIOS + tuple(ALIASES))}")
    plan = {
        "corruption": _corruption,
        "deletion": _deletion,
        "disaster": _disaster,
        "compliance": _compliance,
    }[scenario](cat, facts, now, before, on_date, wal, changes)
    if alert:
        plan.alert = alert
        plan.first.insert(0, hint)
    if plan.backup is not None:
        plan.after.insert(0, erasure_step(facts.erasures))
    return plan


def erasure_step(erasures: int) -> str:
    """Every plan's check of the erasure ledger: each restore and PITR applies it before it reports."""
    if not erasures:
        return (
            "the erasure ledger is empty (`coldcopy gdpr list`): nothing to re-apply; an erasure "
            "recorded before the restore runs would be"
        )
    return (
        f"the output says `erasures re-applied before use: {erasures}` and `subjects remaining: 0`: "
        f"the {erasures} recorded erasure(s) (`coldcopy gdpr list`) were applied before the data "
        "could be used; a ledger that cannot be applied fails the restore (docs/erasures.md)"
    )


def _pitr_dir(target: datetime) -> str:
    return f"./coldcopy-pitr-{_stamp(target)}"


def _pitr_cmd(target: datetime, base: CatalogEntry | None) -> str:
    return (
        f"coldcopy pitr --target-time {iso(target)} --target-dir {_pitr_dir(target)} --port {PITR_PORT} "
        "--start" + (f" --backup {base.name}" if base else "")
    )


def _gaps(wal: WalHealth) -> str:
    return "; ".join(f"after {g.after}, before {g.before}" for g in wal.gaps)


def _pitr_to_now(p: Runbook, cat: Catalog, wal: WalHealth | None, now: datetime, what: str) -> None:
    """Name PITR as the option with the smallest data loss when the window reaches close to now."""
    if wal is None or not wal.window_start or not wal.window_end:
        return
    end = parse_iso(wal.window_end)
    if (now - end).total_seconds() > PITR_FRESH_SECONDS:
        p.risks.append(
            f"the WAL archive's recoverable window ends at {wal.window_end}, more than "
            f"{PITR_FRESH_SECONDS // 60} min ago: point-in-time recovery would not reach now"
        )
        return
    target = min(end, now)
    base = base_for(cat, target)
    if base is None:
        return
    p.first.append(
        f"Smallest data loss: point-in-time recovery {what} (the WAL archive reaches {wal.window_end}, "
        f"base backup {base.name}): `{_pitr_cmd(target, base)}` loses only what was written after "
        f"{wal.window_end}; the dump restore below loses more."
    )
    if wal.gaps:
        p.risks.append(f"the WAL archive has gap(s) ({_gaps(wal)}): check `coldcopy wal-status` first")


def _copy_back(side: str, db: str) -> list[str]:
    """The commands that copy lost rows from the recovered database ``side`` back into ``db``."""
    return [
        "# copy the lost rows back, table by table (replace <table> and <condition>): a dropped table whole,",
        f"pg_dump --data-only --table=<table> {side} | psql {db}",
        "# or only the deleted rows of a table that is still there:",
        f"psql -d {side} -c '\\copy (SELECT * FROM <table> WHERE <condition>) TO STDOUT' | "
        f"psql -d {db} -c '\\copy <table> FROM STDIN'",
    ]


def _deletion_logical(
    p: Runbook,
    cat: Catalog,
    f: Facts,
    now: datetime,
    before: datetime,
    changes: ChangesHealth | None,
    wal: WalHealth | None,
) -> Runbook:
    """Undo a deletion by PITR from the change archive to one second before it, into a new database."""
    target = before - timedelta(seconds=1)
    window = archive_window(changes)
    assert window is not None
    e = _pick(cat, target, prefer_verified=False)
    side = f"{f.db_name}_before_{_stamp(before)}"
    p.first = [
        "Stop whatever is deleting (the job, the migration, the user) and note the time it happened.",
        f"Recover the data as it was at {iso(target)}, one second before the deletion at {iso(before)}, "
        f"into a new database {side} from the change archive (window {iso(window[0])} .. "
        f"{iso(window[1])}): `coldcopy pitr` restores the newest dump before that time and replays the "
        f"archived transactions up to it; the live database {f.db_name!r} keeps running and keeps "
        "its later changes.",
    ]
    _common(p, cat, f, e, now, wal, changes)
    p.risks = [r.replace(" (first command)", "") for r in p.risks]  # no dump verification runs here
    if e is None:
        return p
    est = logical_pitr_estimate(cat, now, changes, target, e)
    if est["available"]:
        p.estimate = {
            "seconds": est["estimate_seconds"],
            "basis": est["how"],
            "measured": est["replay_measured"],
        }
    p.commands = [
        "coldcopy changes status",
        f"coldcopy pitr --target-time {iso(target)} --target-db {side}",
        *_copy_back(side, f.db_name),
        f"# when done: DROP DATABASE {side}",
    ]
    p.after = [
        f"`coldcopy pitr` printed the window, the dump and the batches before it restored, and its last "
        f"replayed transaction committed before {iso(before)}",
        f"the deleted rows are in {side} (`SELECT count(*) FROM <table>`), and so is the newest row "
        f"written just before {iso(before)}",
        f"the restored rows are present in {f.db_name} and their counts match {side}",
        "foreign keys and sequences are consistent (setval where rows were re-inserted)",
        f"drop {side} when done",
    ]
    p.data_loss = {
        "from": iso(before),
        "to": iso(now),
        "seconds": 0,
        "text": f"none before {iso(before)} (the archive is replayed up to {iso(target)}); the live "
        f"database keeps everything written after {iso(before)}, but whatever depended on the deleted "
        "rows after that time must be re-applied by hand",
    }
    return p


def _archive_pitr(
    p: Runbook, cat: Catalog, changes: ChangesHealth | None, now: datetime, where: str, into: str
) -> None:
    """Offer PITR from the change archive to its newest archived commit, with the data-loss window
    the archive's state gives (``where``: the pitr command's destination arguments)."""
    if changes is None:
        return
    window = archive_window(changes)
    if window is None:
        p.risks.append(
            "the change archive has no window (no logical backup since it started"
            + (f", or since it lost continuity at {changes.gap_since}" if changes.gap_since else "")
            + "): point-in-time recovery from it is not possible; take a backup to start one"
        )
        return
    newest = window[1]
    lost = max((now - newest).total_seconds(), 0.0)
    cmd = f"coldcopy pitr --target-time {iso(newest)}" + (f" {where}" if where else "")
    est = logical_pitr_estimate(cat, now, changes, newest, _pick(cat, newest, prefer_verified=False))
    took = f", estimated {est['estimate_seconds']:.0f} s" if est["available"] else ""
    p.first.append(
        f"Smallest data loss: point-in-time recovery from the change archive to its newest archived "
        f"commit ({iso(newest)}), {into}: `{cmd}`{took}. It loses only what was committed after "
        f"{iso(newest)} ({lost:.0f} s before now; last drain {changes.last_drain_at or 'never'}); the "
        "dump restore below loses everything after its backup."
    )
    if changes.last_error:
        p.risks.append(
            f"the change archive's last drain failed ({changes.last_error[:200]}): the archive stops at "
            f"{iso(newest)}; run `coldcopy changes drain` while the database is still reachable"
        )
    if changes.slot_invalidated or not changes.slot_exists:
        p.risks.append(
            "the change archive's replication slot is lost: nothing after the newest commit is kept"
        )
    loss = {
        "to": iso(newest),
        "seconds": round(lost),
        "text": f"changes committed after {iso(newest)}, the newest in the change archive ({lost:.0f} s)",
    }
    if p.data_loss:
        p.data_loss["with_pitr"] = loss
        p.data_loss["text"] += f"; with point-in-time recovery from the change archive only {loss['text']}"
    else:
        p.data_loss = {"from": iso(newest), **loss}


def _verify_cmds(e: CatalogEntry) -> list[str]:
    return [f"coldcopy verify {e.name} --level restore"]


def _corruption(
    cat: Catalog,
    f: Facts,
    now: datetime,
    before: datetime | None,
    d: date | None,
    wal: WalHealth | None,
    changes: ChangesHealth | None = None,
) -> Runbook:
    e = _pick(cat, before, prefer_verified=True)
    p = Runbook("corruption", "data in the live database is corrupt", None)
    p.first = [
        f"Keep the damaged database {f.db_name!r} as it is: restore next to it, never over it first.",
        "Find when the corruption started (application errors, PostgreSQL logs); the backup must predate it"
        + (
            f" — if it started before {e.created_at}, pick an older one (`coldcopy list-backups`) and run "
            f"`coldcopy plan corruption --before <time>`."
            if e
            else "."
        ),
    ]
    _common(p, cat, f, e, now, wal, changes)
    _pitr_to_now(p, cat, wal, now, "to just before the corruption started (`--target-time`)")
    if e is not None:
        side = f"{f.db_name}_restored_{_stamp(now)}"
        p.commands = [
            *_verify_cmds(e),
            f"coldcopy restore --backup-name {e.name} --target-db {side}",
            f"# compare {side} with {f.db_name}; if it is right, replace {f.db_name} (the old one is kept):",
            f"coldcopy restore --backup-name {e.name}",
        ]
        p.after = [
            f"coldcopy verify {e.name} --level restore passed before the swap",
            f"row counts of {side} match `coldcopy show {e.name}`",
            "the application's own smoke tests pass against the restored database",
            "coldcopy backup (start a fresh chain), then coldcopy status",
        ]
        if e.supabase:
            p.first.append(
                f"This is a Supabase project: {side} is a new database in it, where pg_cron cannot run and "
                "the platform's roles own nothing (the restore names both); the replacing restore gives "
                f"everything back inside {f.db_name!r} in one transaction while the platform's services "
                "stay connected, and changes nothing if its check finds a difference."
            )
        _loss(p, e, now, "now")
    side = f"{f.db_name}_pitr_{_stamp(now)}"
    _archive_pitr(
        p, cat, changes, now, f"--target-db {side}", f"into a new database {side} beside {f.db_name!r} "
        "(or to just before the corruption started: an earlier --target-time)",
    )  # fmt: skip
    return p


def _deletion(
    cat: Catalog,
    f: Facts,
    now: datetime,
    before: datetime | None,
    d: date | None,
    wal: WalHealth | None,
    changes: ChangesHealth | None = None,
) -> Runbook:
    p = Runbook("deletion", "rows or tables were deleted by mistake", None)
    if before is None:
        p.blockers.append("give the time of the deletion: coldcopy plan deletion --before 2026-11-24T09:30Z")
        before = now
    elif wal is not None and wal.window_start and wal.window_end:
        target = before - timedelta(seconds=1)
        if in_window(wal, target) or (wal.gaps and parse_iso(wal.window_start) <= target):
            return _deletion_pitr(p, cat, f, now, before, target, wal)
    window = archive_window(changes)
    if not p.blockers and window is not None and window[0] <= before - timedelta(seconds=1) <= window[1]:
        return _deletion_logical(p, cat, f, now, before, changes, wal)
    e = _pick(cat, before, prefer_verified=False)
    if window is not None:
        why = (
            f"not possible: {iso(before)} is outside the change archive's window "
            f"{iso(window[0])} .. {iso(window[1])}"
        )
    elif wal is not None and wal.window_start and wal.window_end:
        why = (
            f"not possible: {iso(before)} is outside the WAL archive's recoverable window "
            f"{wal.window_start} .. {wal.window_end}"
        )
    else:
        why = PITR_UNAVAILABLE
    p.first = [
        "Stop whatever is deleting (the job, the migration, the user) and note the time it happened.",
        f"Point-in-time recovery to just before {iso(before)} is {why}; the plan restores the "
        "newest dump taken before that time into a separate database and copies the lost rows back.",
    ]
    _common(p, cat, f, e, now, wal, changes)
    if e is not None:
        side = f"{f.db_name}_before_{_stamp(before)}"
        p.commands = [
            *_verify_cmds(e),
            f"coldcopy restore --backup-name {e.name} --target-db {side}",
            *_copy_back(side, f.db_name),
        ]
        p.after = [
            f"the restored rows are present in {f.db_name} and their counts match {side}",
            "foreign keys and sequences are consistent (setval where rows were re-inserted)",
            f"drop {side} when done",
        ]
        _loss(p, e, before, f"the deletion at {iso(before)}")
        p.data_loss["text"] += "; rows written in that window and then deleted cannot be recovered"
    return p


def _deletion_pitr(
    p: Runbook, cat: Catalog, f: Facts, now: datetime, before: datetime, target: datetime, wal: WalHealth
) -> Runbook:
    """Undo a deletion by point-in-time recovery to one second before it, beside the live server."""
    base = base_for(cat, target)
    p.first = [
        "Stop whatever is deleting (the job, the migration, the user) and note the time it happened.",
        f"Recover a separate server to {iso(target)}, one second before the deletion at {iso(before)}, "
        f"from the WAL archive (recoverable window {wal.window_start} .. {wal.window_end}); the live "
        f"database {f.db_name!r} keeps running and its later changes are kept.",
    ]
    if not in_window(wal, target):
        dump = _pick(cat, before, prefer_verified=False)
        p.blockers.append(
            f"a WAL gap ({_gaps(wal)}) lies between the base backup and {iso(target)}: the archive is "
            f"recoverable only up to {wal.window_end}; restore a dump instead"
            + (f" (the newest before the deletion: {dump.name})" if dump else "")
        )
    elif wal.gaps:
        p.risks.append(
            f"the WAL archive has gap(s) ({_gaps(wal)}): `coldcopy pitr` refuses if one lies between "
            f"the base backup and {iso(target)}"
        )
    _common(p, cat, f, base, now, wal)
    p.risks = [r.replace(" (first command)", "") for r in p.risks]  # no dump verification runs here
    if base is None:
        return p
    est = pitr_estimate(cat, now, wal, target)
    if est["available"]:
        # Measured only when both the replay rate (drills) and the WAL volume (the archive) are.
        measured = bool(est["replay_measured"] and est["wal_rate_measured"])
        p.estimate = {"seconds": est["estimate_seconds"], "basis": est["how"], "measured": measured}
    side = _pitr_dir(target)
    p.commands = [
        "coldcopy wal-status",
        _pitr_cmd(target, base),
        "# copy the lost rows back from the recovered server, table by table (replace <table>):",
        f"pg_dump --data-only --table=<table> --port {PITR_PORT} {f.db_name} | psql {f.db_name}",
        f"# when done: pg_ctl stop -D {side} and remove {side}",
    ]
    p.after = [
        "`coldcopy wal-status` shows no gap between the base backup and the target before you start",
        f"the recovered server (port {PITR_PORT}) is promoted and its log says it stopped before "
        f"{iso(before)}",
        f"marker queries on port {PITR_PORT}: the deleted rows are there (`SELECT count(*) FROM <table>`), "
        f"and the newest row written just before {iso(before)} is there too",
        f"the restored rows are present in {f.db_name} and their counts match the recovered server",
        "foreign keys and sequences are consistent (setval where rows were re-inserted)",
    ]
    p.data_loss = {
        "from": iso(before),
        "to": iso(now),
        "seconds": 0,
        "text": f"none before {iso(before)} (the recovery replays WAL up to {iso(target)}); the live "
        f"database keeps everything written after {iso(before)}, but whatever depended on the deleted "
        "rows after that time must be re-applied by hand",
    }
    return p


def _disaster(
    cat: Catalog,
    f: Facts,
    now: datetime,
    before: datetime | None,
    d: date | None,
    wal: WalHealth | None,
    changes: ChangesHealth | None = None,
) -> Runbook:
    e = _pick(cat, before, prefer_verified=True)
    if e is not None and e.supabase:
        return _supabase_disaster(cat, f, now, e, wal, changes)
    p = Runbook("disaster", "the database server is lost: restore onto a new server", None)
    p.first = [
        "Provision a new PostgreSQL server of the same or a newer major version"
        + (f" (the backup came from {e.server_version})." if e else "."),
        "Point ColdCopy at it: DB_HOST/DB_PORT/DB_USER/DB_PASSWORD of the new server, the same DO_SPACES_* "
        "settings and the same BACKUP_ENCRYPTION_KEY.",
        "Create the application's roles on the new server (coldcopy restores the database, not the roles).",
    ]
    _common(p, cat, f, e, now, wal, changes)
    _pitr_to_now(p, cat, wal, now, "to now onto the new server")
    if e is not None:
        p.commands = [
            *_verify_cmds(e),
            f"coldcopy restore --backup-name {e.name}",
            *_files_cmds(cat.files_by_backup().get(e.name)),
            "coldcopy backup",
            "coldcopy status",
        ]
        p.after = [
            f"row counts match `coldcopy show {e.name}`",
            "the application connects and its smoke tests pass",
            "the new backup appears in `coldcopy list-backups` and the schedule runs",
        ]
        _provisioned(p, "provision")
        _loss(p, e, now, "now")
    _archive_pitr(p, cat, changes, now, "", f"into {f.db_name!r} on the new server (DB_* pointed at it)")
    return p


def _provisioned(p: Runbook, what: str) -> None:
    """The restore's estimate with the time to provision the new server or project added."""
    if p.estimate:
        p.estimate["seconds"] = round(PROVISION_SECONDS + p.estimate["seconds"], 1)
        p.estimate["basis"] = (
            f"{PROVISION_SECONDS // 60} min to {what} (assumed) + the restore at " + p.estimate["basis"]
        )


# What a database backup of a Supabase project does not hold, to redo by hand on a new project.
STORAGE_FILES_NOT_IN_A_DUMP = (
    "Storage files (the objects' rows come back, the files themselves are not in a database backup)"
)
SUPABASE_NOT_IN_A_DUMP = (
    "Edge Functions (deploy them again from your repository: supabase functions deploy)",
    "Auth settings: providers and their secrets, SMTP, redirect URLs, email templates, JWT expiry",
    "the new project's API URL and keys (anon, service_role): update the application's configuration",
    "network restrictions, custom domain, the database password and other dashboard settings",
)


def _supabase_disaster(
    cat: Catalog,
    f: Facts,
    now: datetime,
    e: CatalogEntry,
    wal: WalHealth | None,
    changes: ChangesHealth | None = None,
) -> Runbook:
    """The project is lost: a new Supabase project, the same extensions, the restore into it."""
    p = Runbook("disaster", "the Supabase project is lost: restore into a new project", None)
    extensions = ", ".join(x for x in e.platform.get("extensions", []) if x != "plpgsql") or "none"
    roles = e.platform.get("roles", [])
    p.first = [
        f"Create a new Supabase project on the same PostgreSQL major version (the backup came from "
        f"{e.server_version}), in the region you want.",
        f"Enable the same extensions in it (Database → Extensions): {extensions}.",
        "Point ColdCopy at it: DB_HOST=db.<new-project-ref>.supabase.co (the direct connection; or the "
        "session pooler, port 5432, user postgres.<new-project-ref>), DB_USER=postgres, DB_PASSWORD of "
        "the new project, DB_NAME=postgres; the same DO_SPACES_* settings and BACKUP_ENCRYPTION_KEY.",
    ]
    _common(p, cat, f, e, now, wal)
    files = cat.files_by_backup().get(e.name)
    p.commands = [
        *_verify_cmds(e),
        f"coldcopy restore --backup-name {e.name}",
        *_files_cmds(files),
        "coldcopy backup",
        "coldcopy status",
    ]
    if files is None:
        p.risks.append(
            f"no files snapshot was taken with {e.name}: the Storage files are not in ColdCopy "
            "(set SUPABASE_STORAGE_* so that every scheduled backup takes one)"
        )
    p.after = [
        "the restore's output lists nothing under left_out that the application needs",
        *(
            [
                f"`coldcopy files restore` checked {files.get('objects')} objects; storage.objects rows "
                f"without a file when it was taken: {files.get('rows_without_file', 'not checked')}"
            ]
            if files
            else []
        ),
        *(
            [
                "re-enter the custom roles' passwords (no dump can read them without superuser): "
                + "; ".join(f"ALTER ROLE {r} WITH PASSWORD '…'" for r in roles)
            ]
            if roles
            else []
        ),
        *(["the cron jobs are listed in cron.job of the new project"] if e.platform.get("cron_jobs") else []),
        "redo what a database backup does not hold: "
        + "; ".join(((STORAGE_FILES_NOT_IN_A_DUMP,) if files is None else ()) + SUPABASE_NOT_IN_A_DUMP),
        "the application connects with the new URL and keys and its smoke tests pass",
    ]
    _provisioned(p, "create the project")
    _loss(p, e, now, "now")
    _archive_pitr(
        p, cat, changes, now, "", "into the new project's database (DB_* pointed at it, no --target-db), "
        "instead of the restore",
    )  # fmt: skip
    return p


def _files_cmds(files: dict[str, Any] | None) -> list[str]:
    """The files step of a restore: the snapshot taken with the backup (None: no step), into the new
    project's Storage (its S3 endpoint and keys in SUPABASE_STORAGE_*)."""
    if files is None:
        return []
    snap = files.get("snapshot")
    return [
        "# the Storage files: set SUPABASE_STORAGE_* to the new project's S3 endpoint and keys, then",
        f"coldcopy files verify --snapshot {snap}",
        f"coldcopy files restore --snapshot {snap}",
    ]


def _compliance(
    cat: Catalog,
    f: Facts,
    now: datetime,
    before: datetime | None,
    d: date | None,
    wal: WalHealth | None,
    changes: ChangesHealth | None = None,
) -> Runbook:
    p = Runbook("compliance", "show the data as it was on a date (audit, legal request)", None)
    if d is None:
        p.blockers.append("give the date: coldcopy plan compliance --date 2026-06-30")
        d = now.date()
    end = datetime.combine(d, time.max, tzinfo=UTC)
    oldest_kept = now - timedelta(days=f.compliance_retention_days)
    if end < oldest_kept:
        p.blockers.append(
            f"{d} is outside the compliance retention of {f.compliance_retention_days} days "
            f"(backups before {iso(oldest_kept)[:10]} are deleted by policy)"
        )
    e = _pick(cat, end, prefer_verified=False)
    p.first = [f"Restore into a separate database; never touch {f.db_name!r} for an audit."]
    _common(p, cat, f, e, now, wal, changes)
    if e is not None:
        side = f"compliance_{d.strftime('%Y%m%d')}"
        p.commands = [
            *_verify_cmds(e),
            f"coldcopy restore --backup-name {e.name} --target-db {side}",
            f"# when the audit is done: psql -c 'DROP DATABASE {side}'",
        ]
        p.after = [
            f"row counts of {side} match `coldcopy show {e.name}`",
            f"record that {side} shows the data as of {e.created_at}",
            f"access to {side} is limited to the auditors",
        ]
        gap = (end - parse_iso(e.created_at)).total_seconds()
        p.data_loss = {
            "from": e.created_at,
            "to": iso(end),
            "seconds": round(max(gap, 0)),
            "text": f"the backup shows the data as of {e.created_at}; changes later on {d} are not in it",
        }
        p.risks = [r for r in p.risks if not r.startswith("point-in-time")]
    return p
