"""`coldcopy files backup|list|restore|verify`: the project's Storage files (SUPABASE_STORAGE_*)."""

from __future__ import annotations

import argparse

from coldcopy.backup.files import committed, storage_rows, take_snapshot
from coldcopy.cli.common import now, settings_for
from coldcopy.cli.output import present
from coldcopy.config import FILES, STORAGE
from coldcopy.context import open_context
from coldcopy.core.files import pairing_text
from coldcopy.core.humanize import human_bytes, table
from coldcopy.core.names import validate_name
from coldcopy.restore.files import restore_files, verify_files
from coldcopy.storage.project_files import open_project_storage


def cmd_files_backup(args: argparse.Namespace) -> int:
    s = settings_for(args, (STORAGE, FILES))
    ctx = open_context(s)
    backup = validate_name(args.backup) if args.backup else None
    r = take_snapshot(ctx, open_project_storage(s), now=now(), backup=backup, rows=lambda: storage_rows(s))
    present(
        args,
        r.to_dict(),
        f"files snapshot {r.snapshot}: {r.objects} objects ({r.unchanged} unchanged, {r.changed} new or "
        f"changed); {r.copied_contents} contents copied ({human_bytes(r.copied_bytes)}), "
        f"{r.deduplicated} already stored\n  {pairing_text(r.summary)}",
    )
    return 0


def cmd_files_list(args: argparse.Namespace) -> int:
    commits = committed(open_context(settings_for(args)).storage)
    rows = [
        {
            k: c.get(k)
            for k in ("snapshot", "created_at", "backup", "buckets", "objects", "bytes", "stored_bytes")
        }
        for c in reversed(commits.values())
    ]
    present(
        args,
        rows,
        lambda: (
            table(
                [
                    [
                        str(r["snapshot"]),
                        str(r["created_at"]),
                        str(r["backup"] or "-"),
                        str(r["objects"]),
                        human_bytes(r["bytes"] or 0),
                    ]
                    for r in rows
                ],
                ["SNAPSHOT", "CREATED (UTC)", "BACKUP", "OBJECTS", "SIZE"],
            )
            if rows
            else "no files snapshots yet — run `coldcopy files backup`"
        ),
    )
    return 0


def cmd_files_restore(args: argparse.Namespace) -> int:
    s = settings_for(args, (STORAGE, FILES))
    r = restore_files(
        open_context(s), open_project_storage(s), args.snapshot, bucket=args.bucket, prefix=args.prefix
    )
    lines = [
        f"files snapshot {r.snapshot} (backup {r.backup or '-'}): {r.selected} objects selected, "
        f"{r.restored} written ({human_bytes(r.bytes_written)}), {r.skipped} already identical, "
        f"{r.checked} checked against the index",
        *(
            [
                f"  when it was taken: {r.rows_without_file} storage.objects rows without a file, "
                f"{r.files_without_row} files without a row"
            ]
            if r.rows_without_file is not None
            else []
        ),
        *(f"  ! {p}" for p in r.problems[:50]),
    ]
    present(args, r.to_dict(), "\n".join(lines))
    return 0 if r.ok else 1


def cmd_files_verify(args: argparse.Namespace) -> int:
    out = verify_files(open_context(settings_for(args)), args.snapshot)
    text = f"files snapshot {out['snapshot']}: {out['contents']} contents, {out['objects']} objects: " + (
        "ok" if out["ok"] else f"{len(out['damaged_contents'])} contents DAMAGED"
    )
    present(args, out, "\n".join([text, *(f"  ! {o}" for o in out["damaged_objects"])]))
    return 0 if out["ok"] else 1
