"""Commands for logical backups: `list-backups`, `show`, `status`, `verify`, `restore`, `catalog
rebuild` (`backup` itself is :mod:`coldcopy.cli.backup`)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from coldcopy.changes.health import load_health
from coldcopy.cli.common import now, settings_for
from coldcopy.cli.output import present, progress_meter
from coldcopy.config import DB, STORAGE
from coldcopy.context import open_context
from coldcopy.core.files import pairing_text
from coldcopy.core.humanize import human_age, human_bytes, table
from coldcopy.core.keys import stale_key_ids
from coldcopy.core.manifest import Manifest
from coldcopy.core.names import validate_name
from coldcopy.core.shape import summary as shape_summary
from coldcopy.core.views import listing_rows, status_view
from coldcopy.restore.logical import run_restore
from coldcopy.storage.state_store import load_keys_state, pending_intents
from coldcopy.verify.run import run_verify
from coldcopy.wal.monitor import compute

log = logging.getLogger("coldcopy")


def _listing_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no backups yet — run `coldcopy backup`"
    verified = {True: "ok", False: "FAILED", None: "-"}
    files = any(r["files_snapshot"] for r in rows)  # the column only where Storage files are backed up
    return table(
        [
            [
                r["name"],
                r["kind"],
                r["created_at"],
                human_bytes(r["size_bytes"]),
                f"{r['duration_seconds']:.1f} s",
                "yes" if r["encrypted"] else "NO",
                verified[r["verification_ok"]]
                + (f" ({r['verification_level']})" if r["verification_level"] else ""),
                *([r["files_snapshot"] or "-"] if files else []),
            ]
            for r in rows
        ],
        [
            "NAME",
            "KIND",
            "CREATED (UTC)",
            "SIZE",
            "DURATION",
            "ENCRYPTED",
            "VERIFIED",
            *(["FILES"] if files else []),
        ],
    )


def cmd_list(args: argparse.Namespace) -> int:
    cat = open_context(settings_for(args)).catalog.read()
    rows = listing_rows(cat, cat.entries(args.kind))
    present(args, rows, lambda: _listing_text(rows))
    return 0


def _manifest_text(m: Manifest) -> str:
    d = m.to_dict()
    keys = ("name", "kind", "database", "cluster", "started_at", "finished_at", "duration_seconds")
    lines = [f"{k:20} {d[k]}" for k in (*keys, "server_version", "tool", "row_counts", "coldcopy_version")]
    pieces = m.data.pieces()
    where = pieces[0][0] if len(pieces) == 1 else f"{pieces[0][0]} … {pieces[-1][0]} ({len(pieces)} volumes)"
    lines += [
        f"{'stored size':20} {human_bytes(m.stored_size)} ({m.stored_size} bytes)",
        f"{'dump size':20} {human_bytes(m.raw_size)} ({m.raw_size} bytes)",
        f"{'compression':20} {m.compression}",
        f"{'encryption':20} {m.encryption}",
        f"{'data':20} {where}",
        f"{'':20} sha256 {m.data.stored_sha256} (dump sha256 {m.data.raw_sha256})",
        f"{'roles':20} {m.globals.key if m.globals else m.globals_note or 'not saved'}",
        f"{'platform':20} {_platform_text(m.platform)}",
        f"{'shape':20} {shape_summary(m.shape)}",
        *(f"{k:20} {v}" for k, v in m.extra.items()),
        f"tables ({len(m.tables)}):",
        *(f"  {t:40} {n:>12,}" for t, n in sorted(m.tables.items())),
    ]
    return "\n".join(lines)


def _platform_text(platform: dict[str, Any]) -> str:
    if not platform:
        return "not recorded"
    attrs = [k for k, v in platform.get("attributes", {}).items() if v]
    return f"{platform.get('platform')}, as {platform.get('role')} ({', '.join(attrs) or 'no attributes'})"


def cmd_show(args: argparse.Namespace) -> int:
    ctx = open_context(settings_for(args))
    m = ctx.catalog.manifest(validate_name(args.name))
    files = ctx.catalog.read().files_by_backup().get(m.name)
    text = _manifest_text(m) + (f"\n{'files snapshot':20} {pairing_text(files)}" if files else "")
    present(args, {**m.to_dict(), "files_snapshot": files}, text)
    return 0


def _status_text(st: dict[str, Any], encrypted: bool) -> str:
    last = st["last_backup"]
    ago = (
        f" ({human_age(st['last_backup_age_seconds'])} ago, {human_bytes(last['size_bytes'])})"
        if last
        else ""
    )
    counts = ", ".join(f"{n} {k}" for k, n in sorted(st["counts_by_kind"].items())) or "none"
    lines = [
        f"last backup:  {last['name'] if last else 'none'}{ago}",
        f"backups:      {st['backup_count']} ({counts}), {human_bytes(st['total_size_bytes'])} stored",
        f"encryption:   {'on' if encrypted else 'OFF'}",
    ]
    wal = st["wal"]
    if wal is not None:
        age = f", {human_age(wal['last_archived_age_seconds'])} ago" if wal["last_archived_at"] else ""
        lines.append(f"WAL archive:  newest {wal['last_segment'] or 'none'}{age}; {len(wal['gaps'])} gap(s)")
        window = f"{wal['window_start']} .. {wal['window_end']}" if wal["window_start"] else "none yet"
        lines.append(f"recoverable:  {window}")
        lines += [f"  ~ {w}" for w in wal["warnings"]]
    ch = st.get("changes")
    if ch is not None and not ch["set_up"]:
        lines.append(f"changes:      torn down at {ch['torn_down_at']} (not set up)")
    elif ch is not None:
        slot = "MISSING" if not ch["slot_exists"] else "INVALIDATED" if ch["slot_invalidated"] else "ok"
        through = ch["newest_change_age_seconds"]
        lines.append(
            f"changes:      slot {ch['slot']} {slot}, holds {human_bytes(ch['slot_lag_bytes'])} of WAL; "
            + (f"archived through {human_age(through)} ago" if through is not None else "never drained")
        )
        lines += [f"  ~ {w}" for w in ch["warnings"]]
    files = st.get("files")
    if files is not None:
        newest = files["newest"]
        lines.append(
            "files:        "
            + (
                f"newest snapshot {pairing_text(newest)} ({human_age(files['newest_age_seconds'])} ago)"
                if newest
                else "no complete snapshot yet"
            )
        )
        lines += [f"  ~ {w}" for w in files["warnings"]]
    if st["problems"]:
        lines += ["problems:", *(f"  ! {p}" for p in st["problems"])]
    else:
        lines.append("status:       ok")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    s = settings_for(args)
    ctx = open_context(s)
    # The WAL archive listed now (the API reads the tick's stored summary of the same listing).
    st = status_view(
        ctx.catalog.read(),
        now(),
        encrypted=s.encrypted,
        wal=compute(ctx.storage),
        thresholds=s.thresholds,
        changes=load_health(ctx.storage),  # the last drain's record (None: the archive is not in use)
    )
    for intent in pending_intents(ctx.storage):  # a restore killed between its renames
        st["ok"] = False
        st["problems"].append(
            f"a restore of {intent.get('database')} was interrupted at {intent.get('at')}: the database may "
            f"be missing (the original is {intent.get('renamed_to')}); run `coldcopy backup` or "
            "`coldcopy restore` to put it back"
        )
    keys = load_keys_state(ctx.storage)  # counted by the last `key rotate` or `key status`
    if keys is not None:
        st["keys"] = keys
        unheld = stale_key_ids(keys["census"], ctx.key.key_ids() if ctx.key else ())
        if unheld:
            st["ok"] = False
            st["problems"].append(
                "stored streams are under key id "
                + ", ".join(f"{k} ({n})" for k, n in unheld.items())
                + f" (counted {keys.get('at')}), which no setting holds: put that passphrase in "
                "BACKUP_ENCRYPTION_KEY_PREVIOUS or finish `coldcopy key rotate` (docs/key-rotation.md)"
            )
    present(args, st, lambda: _status_text(st, s.encrypted))
    return 0 if st["ok"] else 1


def cmd_verify(args: argparse.Namespace) -> int:
    s = settings_for(args)
    with progress_meter(args) as meter:
        r = run_verify(s, args.name, level=args.level, progress=meter)
    lines = [
        f"  {'skip' if c.skipped else 'ok  ' if c.ok else 'FAIL'} {c.name}"
        + (f": {c.detail}" if c.detail else "")
        for c in r.checks
    ]
    verdict = (
        "verified"
        if r.ok
        else "NOT VERIFIED: the scratch environment"
        if r.exit_code == 9
        else "NOT VERIFIED: the storage could not be read (the backup may be fine; run it again)"
        if r.exit_code == 6
        else "VERIFICATION FAILED"
    )
    lines.append(f"{r.name}: {verdict} at level {r.level} in {r.duration_seconds:.1f} s")
    present(args, r.to_dict(), "\n".join(lines))
    return r.exit_code


def cmd_restore(args: argparse.Namespace) -> int:
    s = settings_for(args, (DB, STORAGE))
    with progress_meter(args) as meter:
        r = run_restore(
            s,
            args.backup_name,
            args.target_db,
            clean=args.clean,
            keep_old=args.keep_old,
            no_owner=args.no_owner,
            progress=meter,
        )
    # The files that go with this database (storage.objects rows point to them).
    r["files_snapshot"] = open_context(s).catalog.read().files_by_backup().get(str(r["name"]))
    present(args, r, lambda: _restore_text(r))
    return 0


def _restore_text(r: dict[str, Any]) -> str:
    kept = f"; the previous database is kept as {r['previous_kept_as']}" if r["previous_kept_as"] else ""
    lines = [f"restored {r['name']} into {r['target_db']} in {r['duration_seconds']:.1f} s{kept}"]
    if r.get("platform") == "supabase":
        lines.append(
            f"  in one transaction, checked before it committed: the shape and {r['tables_checked']} tables' "
            f"row counts equal the backup's; roles given back: {', '.join(r['roles_given_back']) or 'none'}"
        )
    lines.append(
        f"  erasures re-applied before use: {r.get('erasures_applied', 0)} "
        f"({r.get('erased_rows_removed', 0)} rows changed); subjects remaining: 0 (every check counts 0)"
    )
    lines += [f"  not given back: {x}" for x in r.get("left_out", [])]
    files = r.get("files_snapshot")
    if files:
        lines.append(f"  its Storage files: snapshot {pairing_text(files)}")
        lines.append(f"  restore them with: coldcopy files restore --snapshot {files['snapshot']}")
    lines += [
        f"  run as a superuser or set in the dashboard: {sql}" for sql in r.get("settings_to_apply", [])
    ]
    return "\n".join(lines)


def cmd_catalog_rebuild(args: argparse.Namespace) -> int:
    cat = open_context(settings_for(args)).catalog.rebuild()
    out = {"backups": len(cat.backups), "unreadable": cat.unreadable, "watermark": cat.watermark}
    bad = (
        f", {len(cat.unreadable)} unreadable manifests: {', '.join(cat.unreadable)}" if cat.unreadable else ""
    )
    present(args, out, f"catalog rebuilt: {len(cat.backups)} backups{bad}")
    return 0
