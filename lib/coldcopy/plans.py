"""Disaster-recovery runbooks computed from the bucket's real state.  Pure: no I/O.

``build_plan(scenario, cat, facts, now, before=, on_date=)`` picks the backup that fits, fills the
exact ``coldcopy`` commands in with real names, and says how long it should take, how much data
would be lost, what to check afterwards and what would make the plan fail.  The alert rules'
plan names (``missed-backup``, ``corrupt-backup``…) map onto the four runbooks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from .catalog import Catalog
from .manifest import CatalogEntry, iso, parse_iso
from .recovery_time import LOGICAL_KINDS, PITR_UNAVAILABLE, PROVISION_SECONDS, restore_seconds, throughput

SCENARIOS = ("corruption", "deletion", "disaster", "compliance")
# The alert rules' plan commands (alerts.PLANS) -> (runbook, what to do first for that alert).
ALIASES: dict[str, tuple[str, str]] = {
    "missed-backup": (
        "disaster",
        "No recent backup: take one now (`coldcopy backup`), then find out why "
        "the schedule missed it (`coldcopy runs`).",
    ),
    "failed-backup": (
        "disaster",
        "The last backup failed: read its error (`coldcopy status`), fix it and run `coldcopy backup`.",
    ),
    "stale-job": ("disaster", "A job stopped reporting: check `coldcopy runs`, then run it again."),
    "backup-size": (
        "disaster",
        "The backup size changed sharply: compare `coldcopy list-backups` with "
        "the database before trusting the newest backup.",
    ),
    "failed-verification": (
        "corruption",
        "A verification failed: see why (`coldcopy list-backups`, "
        "`coldcopy runs`) and verify the backup again at level restore.",
    ),
    "corrupt-backup": (
        "corruption",
        "A backup's manifest cannot be read: keep it for inspection and rely "
        "on the newest verified backup below.",
    ),
    "wal-archive": (
        "deletion",
        "The WAL archive needs attention; until it is healthy only the dumps below can be restored.",
    ),
    "recovery-window": (
        "deletion",
        "The recovery window is shorter than required: only the dumps below can be restored.",
    ),
}


@dataclass(frozen=True)
class Facts:
    """What the plan needs to know besides the catalog (the I/O wrapper fills it in)."""

    db_name: str
    key_id: str | None  # of the configured BACKUP_ENCRYPTION_KEY, None when unset
    compliance_retention_days: int = 365


@dataclass
class Plan:
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


def _verification(cat: Catalog, name: str) -> dict[str, Any] | None:
    v = cat.verifications.get(name)
    return {"at": v.get("at"), "level": v.get("level"), "ok": v.get("ok")} if v else None


def _verified(cat: Catalog, name: str) -> bool:
    return bool((cat.verifications.get(name) or {}).get("ok"))


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


def _common(plan: Plan, cat: Catalog, facts: Facts, e: CatalogEntry | None, now: datetime) -> None:
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
    v = cat.verifications.get(e.name)
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
    plan.risks.append(f"point-in-time recovery is {PITR_UNAVAILABLE}")
    rate = throughput(cat, now)
    plan.estimate = {
        "seconds": restore_seconds(e.raw_size_bytes, rate),
        "basis": rate.basis,
        "measured": rate.measured,
    }


def _loss(plan: Plan, e: CatalogEntry | None, until: datetime, what: str) -> None:
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
) -> Plan:
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
    }[scenario](cat, facts, now, before, on_date)
    if alert:
        plan.alert = alert
        plan.first.insert(0, hint)
    return plan


def _verify_cmds(e: CatalogEntry) -> list[str]:
    return [f"coldcopy verify {e.name} --level restore"]


def _corruption(cat: Catalog, f: Facts, now: datetime, before: datetime | None, d: date | None) -> Plan:
    e = _pick(cat, before, prefer_verified=True)
    p = Plan("corruption", "data in the live database is corrupt", None)
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
    _common(p, cat, f, e, now)
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
        _loss(p, e, now, "now")
    return p


def _deletion(cat: Catalog, f: Facts, now: datetime, before: datetime | None, d: date | None) -> Plan:
    p = Plan("deletion", "rows or tables were deleted by mistake", None)
    if before is None:
        p.blockers.append("give the time of the deletion: coldcopy plan deletion --before 2026-11-24T09:30Z")
        before = now
    e = _pick(cat, before, prefer_verified=False)
    p.first = [
        "Stop whatever is deleting (the job, the migration, the user) and note the time it happened.",
        f"Point-in-time recovery to just before {iso(before)} is {PITR_UNAVAILABLE}; the plan restores the "
        "newest dump taken before that time into a separate database and copies the lost rows back.",
    ]
    _common(p, cat, f, e, now)
    if e is not None:
        side = f"{f.db_name}_before_{_stamp(before)}"
        p.commands = [
            *_verify_cmds(e),
            f"coldcopy restore --backup-name {e.name} --target-db {side}",
            "# copy the lost rows back, table by table (replace <table>):",
            f"pg_dump --data-only --table=<table> {side} | psql {f.db_name}",
        ]
        p.after = [
            f"the restored rows are present in {f.db_name} and their counts match {side}",
            "foreign keys and sequences are consistent (setval where rows were re-inserted)",
            f"drop {side} when done",
        ]
        _loss(p, e, before, f"the deletion at {iso(before)}")
        p.data_loss["text"] += "; rows written in that window and then deleted cannot be recovered"
    return p


def _disaster(cat: Catalog, f: Facts, now: datetime, before: datetime | None, d: date | None) -> Plan:
    e = _pick(cat, before, prefer_verified=True)
    p = Plan("disaster", "the database server is lost: restore onto a new server", None)
    p.first = [
        "Provision a new PostgreSQL server of the same or a newer major version"
        + (f" (the backup came from {e.server_version})." if e else "."),
        "Point ColdCopy at it: DB_HOST/DB_PORT/DB_USER/DB_PASSWORD of the new server, the same DO_SPACES_* "
        "settings and the same BACKUP_ENCRYPTION_KEY.",
        "Create the application's roles on the new server (coldcopy restores the database, not the roles).",
    ]
    _common(p, cat, f, e, now)
    if e is not None:
        p.commands = [
            *_verify_cmds(e),
            f"coldcopy restore --backup-name {e.name}",
            "coldcopy backup",
            "coldcopy status",
        ]
        p.after = [
            f"row counts match `coldcopy show {e.name}`",
            "the application connects and its smoke tests pass",
            "the new backup appears in `coldcopy list-backups` and the schedule runs",
        ]
        if p.estimate:
            p.estimate["seconds"] = round(PROVISION_SECONDS + p.estimate["seconds"], 1)
            p.estimate["basis"] = (
                f"{PROVISION_SECONDS // 60} min to provision (assumed) + the restore at "
                + p.estimate["basis"]
            )
        _loss(p, e, now, "now")
    return p


def _compliance(cat: Catalog, f: Facts, now: datetime, before: datetime | None, d: date | None) -> Plan:
    p = Plan("compliance", "show the data as it was on a date (audit, legal request)", None)
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
    _common(p, cat, f, e, now)
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
