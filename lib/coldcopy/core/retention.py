"""Retention: which backups and which WAL `coldcopy cleanup` deletes, and why.  Pure: no I/O.

The policy (defaults are what our users run today):

- full and base backups are kept ``full_days``, compliance backups ``compliance_days``;
- tiers, off by default: the newest backup of each of the last ``keep_daily`` days that have a
  backup, of the last ``keep_weekly`` ISO weeks, ``keep_monthly`` months and ``keep_yearly`` years
  (UTC), counted per database over every kind of backup;
- a backup is kept when any rule keeps it, and deleted otherwise.

Hard rules, whatever the settings: a pinned backup is never deleted; the newest backup that passed
verification (per database) is never deleted; the newest backup of each database is never deleted
(so no setting can leave a database with no backup at all); a backup whose manifest cannot be read
is never deleted, only reported.

WAL (``wal/<timeline>/<segment>``): a segment goes when it is older than the WAL retention AND its
position is before the start segment of every retained base backup, so every retained base backup
keeps all the WAL from its start to the end of the recoverable window.  WAL that cannot be placed
(a file name we do not understand) is never deleted; when a retained base backup's start is unknown
(its manifest has none, or the manifest of a base backup cannot be read) no WAL is deleted.

A backup's time is the time in its name (``…_YYYYMMDD_HHMMSS``, UTC).  An age is "older than N
days" when ``now - created >= N days``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from coldcopy.core.names import parse_name

WAL_NAME_RE = re.compile(r"^(?P<tli>[0-9A-Fa-f]{8})(?P<log>[0-9A-Fa-f]{8})(?P<seg>[0-9A-Fa-f]{8})(\..*)?$")
ABORT_RULE_PREFIX = "coldcopy-abort-incomplete-uploads"


@dataclass(frozen=True)
class RetentionPolicy:
    """What cleanup keeps: days per kind, the tiers, and the bucket's upload-abort rule."""

    full_days: int = 30
    compliance_days: int = 365
    wal_days: int = 30
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    abort_upload_days: int = 3  # bucket lifecycle: abort incomplete multipart uploads after this

    def days_for(self, kind: str) -> int | None:
        return {"full": self.full_days, "base": self.full_days, "compliance": self.compliance_days}.get(kind)

    def describe(self) -> str:
        tiers = ", ".join(
            f"{n} {label}"
            for n, label in (
                (self.keep_daily, "daily"),
                (self.keep_weekly, "weekly"),
                (self.keep_monthly, "monthly"),
                (self.keep_yearly, "yearly"),
            )
            if n
        )
        return (
            f"full/base {self.full_days} days, compliance {self.compliance_days} days, "
            f"WAL {self.wal_days} days, tiers: {tiers or 'none'}"
        )


@dataclass(frozen=True)
class Backup:
    """A backup as retention sees it: its name's parts and, for a base backup, its first WAL segment."""

    name: str
    kind: str
    database: str
    created_at: datetime
    wal_start: str | None = None  # base backups: the first WAL segment they need (24 hex digits)

    @classmethod
    def from_name(cls, name: str, wal_start: str | None = None) -> Backup:
        n = parse_name(name)
        return cls(name, n.kind, n.database, n.created_at, wal_start)


@dataclass(frozen=True)
class WalFile:
    """An archived WAL object and when it was stored."""

    key: str  # wal/<timeline>/<segment>[.suffix]
    archived_at: datetime


@dataclass
class RetentionPlan:
    """What cleanup would delete and keep, with the reasons, and what it reports."""

    delete: list[tuple[str, str]] = field(default_factory=list)  # (name, reason), oldest first
    keep: list[tuple[str, list[str]]] = field(default_factory=list)  # (name, reasons), newest first
    wal_delete: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)
    reported: list[str] = field(default_factory=list)

    @property
    def plan_id(self) -> str:
        """A short digest of exactly what would be deleted (to check a real run against a dry run)."""
        text = "\n".join([n for n, _ in self.delete] + ["--wal--"] + [k for k, _ in self.wal_delete])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- WAL names ---------------------------------------------------------------------------------------
def wal_position(segment: str) -> tuple[int, int, int] | None:
    """(timeline, log, seg) of a WAL file name (a segment, possibly with a suffix), or None."""
    m = WAL_NAME_RE.match(segment)
    if not m:
        return None
    return int(m["tli"], 16), int(m["log"], 16), int(m["seg"], 16)


def _wal_key_position(key: str) -> tuple[int, int] | None:
    """(log, seg) of ``wal/<timeline>/<segment>…`` when the key is well formed, else None."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != "wal":
        return None
    pos = wal_position(parts[2])
    if pos is None or parts[1].upper() != parts[2][:8].upper():
        return None
    return pos[1], pos[2]


# -- tiers ---------------------------------------------------------------------------------------------
def _day(b: Backup) -> object:
    return b.created_at.date()


def _week(b: Backup) -> object:
    return b.created_at.isocalendar()[:2]


def _month(b: Backup) -> object:
    return (b.created_at.year, b.created_at.month)


def _year(b: Backup) -> object:
    return b.created_at.year


TIERS: tuple[tuple[str, Callable[[Backup], object]], ...] = (
    ("daily", _day),
    ("weekly", _week),
    ("monthly", _month),
    ("yearly", _year),
)


def _newest_first(backups: Iterable[Backup]) -> list[Backup]:
    return sorted(backups, key=lambda b: (b.created_at, b.name), reverse=True)


def tier_picks(backups: Sequence[Backup], policy: RetentionPolicy) -> dict[str, list[str]]:
    """name -> tier reasons ("daily 1/7" …): the newest backup of each of the last N periods."""
    picks: dict[str, list[str]] = {}
    for label, period in TIERS:
        count = getattr(policy, f"keep_{label}")
        if count <= 0:
            continue
        seen: set[object] = set()
        for b in _newest_first(backups):  # one database's backups
            key = period(b)
            if key in seen:
                continue
            seen.add(key)
            picks.setdefault(b.name, []).append(f"{label} {len(seen)}/{count}")
            if len(seen) >= count:
                break
    return picks


# -- the plan ------------------------------------------------------------------------------------------
def plan_retention(
    backups: Sequence[Backup],
    pins: Mapping[str, str],
    verifications: Mapping[str, bool],
    unreadable: Mapping[str, str],
    wal: Sequence[WalFile],
    policy: RetentionPolicy,
    now: datetime,
) -> RetentionPlan:
    """What to delete and what to keep.

    ``pins``: name -> reason.  ``verifications``: name -> whether its latest verification passed.
    ``unreadable``: name -> why its manifest cannot be read (never deleted, always reported).
    """
    plan = RetentionPlan()
    for name, why in sorted(unreadable.items()):
        plan.reported.append(
            f"manifest of {name} cannot be read ({why}): kept; inspect it, or remove it by hand"
        )
    readable = [b for b in backups if b.name not in unreadable]
    reasons: dict[str, list[str]] = {b.name: [] for b in readable}
    by_db: dict[str, list[Backup]] = {}
    for b in readable:
        by_db.setdefault(b.database, []).append(b)
    for db, group in sorted(by_db.items()):
        ordered = _newest_first(group)
        reasons[ordered[0].name].append(f"newest backup of {db}")
        verified = [b for b in ordered if verifications.get(b.name) is True]
        if verified:
            reasons[verified[0].name].append("newest verified backup")
        for name, tiers in tier_picks(group, policy).items():
            reasons[name].extend(tiers)
    delete: list[tuple[Backup, str]] = []
    for b in readable:
        if b.name in pins:
            reasons[b.name].insert(0, f"pinned: {pins[b.name]}")
        days = policy.days_for(b.kind)
        if days is None:
            reasons[b.name].append(f"unknown kind {b.kind!r}")
        elif now - b.created_at < timedelta(days=days):
            reasons[b.name].append(f"younger than {days} days ({b.kind})")
        if not reasons[b.name]:
            why = " and not kept by any tier" if any(getattr(policy, f"keep_{t}") for t, _ in TIERS) else ""
            delete.append((b, f"{b.kind} backup older than {days} days{why}"))
    delete.sort(key=lambda d: (d[0].created_at, d[0].name))
    plan.delete = [(b.name, why) for b, why in delete]
    gone = {b.name for b, _ in delete}
    plan.keep = [(b.name, reasons[b.name]) for b in _newest_first(readable) if b.name not in gone]
    retained = [b for b in readable if b.name not in gone]
    plan.wal_delete = _plan_wal(retained, unreadable, wal, policy, now, plan.reported)
    return plan


def _plan_wal(
    retained: Sequence[Backup],
    unreadable: Mapping[str, str],
    wal: Sequence[WalFile],
    policy: RetentionPolicy,
    now: datetime,
    reported: list[str],
) -> list[tuple[str, str]]:
    if not wal:
        return []
    holds = [f"the manifest of base backup {n} cannot be read" for n in sorted(unreadable) if _is_base(n)]
    starts: list[tuple[tuple[int, int], str]] = []
    for b in retained:
        if b.kind != "base" and b.wal_start is None:
            continue
        pos = wal_position(b.wal_start) if b.wal_start else None
        if pos is None or len(b.wal_start or "") != 24:
            holds.append(f"base backup {b.name} has no readable start WAL segment")
        else:
            starts.append(((pos[1], pos[2]), b.name))
    if holds:
        reported.append(f"no WAL deleted: {'; '.join(holds)}")
        return []
    boundary = min(starts) if starts else None
    cutoff = now - timedelta(days=policy.wal_days)
    out: list[tuple[str, str]] = []
    for f in sorted(wal, key=lambda w: w.key):
        where = _wal_key_position(f.key)
        if where is None or f.archived_at > cutoff:
            continue
        if boundary is None:
            out.append((f.key, f"older than {policy.wal_days} days; no retained base backup needs WAL"))
        elif where < boundary[0]:
            out.append(
                (
                    f.key,
                    f"older than {policy.wal_days} days and before {boundary[1]}'s start "
                    f"(the oldest retained base backup)",
                )
            )
    return out


def _is_base(name: str) -> bool:
    return name.startswith("base_")


# -- bucket lifecycle ----------------------------------------------------------------------------------
def lifecycle_rules(policy: RetentionPolicy, prefix: str = "") -> list[dict[str, object]]:
    """The bucket lifecycle rules ColdCopy wants for ``prefix``: only abort incomplete uploads.

    No expiration: retention is cleanup's job, because only cleanup honours pins, the newest verified
    backup and the WAL that retained base backups need.
    """
    return [
        {
            "ID": f"{ABORT_RULE_PREFIX}.{re.sub(r'[^A-Za-z0-9_.-]', '-', prefix)}"[:255],
            "Filter": {"Prefix": prefix},
            "Status": "Enabled",
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": policy.abort_upload_days},
        }
    ]


def _covers(rule: Mapping[str, object], key_prefix: str) -> bool:
    filt = rule.get("Filter")
    rule_prefix = rule.get("Prefix")  # the legacy form
    if isinstance(filt, Mapping):
        if "And" in filt and isinstance(filt["And"], Mapping):
            rule_prefix = filt["And"].get("Prefix", "")
        elif "Prefix" in filt:
            rule_prefix = filt["Prefix"]
        elif "Tag" in filt or "ObjectSizeGreaterThan" in filt or "ObjectSizeLessThan" in filt:
            rule_prefix = ""
    text = str(rule_prefix or "")
    return key_prefix.startswith(text) or text.startswith(key_prefix)


def lifecycle_problems(
    rules: Sequence[Mapping[str, object]], policy: RetentionPolicy, prefix: str = ""
) -> list[str]:
    """Why existing rules disagree with the policy (an expiration that would delete our backups or WAL)."""
    problems: list[str] = []
    for rule in rules:
        if rule.get("Status") != "Enabled":
            continue
        exp = rule.get("Expiration")
        rid = rule.get("ID", "?")
        for area, need in (
            ("backups/", max(policy.full_days, policy.compliance_days)),
            ("wal/", policy.wal_days),
        ):
            if not _covers(rule, prefix + area):
                continue
            if isinstance(exp, Mapping):
                days = exp.get("Days")
                if isinstance(days, int) and days < need:
                    problems.append(
                        f"rule {rid} expires {prefix}{area} after {days} days, less than the policy's {need}"
                    )
                elif "Date" in exp:
                    problems.append(f"rule {rid} expires {prefix}{area} on a fixed date, whatever the policy")
                elif isinstance(days, int) and area == "backups/":
                    problems.append(
                        f"rule {rid} expires {prefix}{area} after {days} days: pinned backups and the newest "
                        "verified backup would not be protected"
                    )
    return problems
