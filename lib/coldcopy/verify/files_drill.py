"""The weekly files drill: a sample of the newest files snapshot restored into a scratch bucket and
compared.

The sample (``core.files.drill_sample``: the largest object and a seeded random set, the same all
week) is written through the restore's own path (``restore.files.write_object``: every byte
authenticated before it is written) into a new bucket of the project's Storage,
``coldcopy-drill-<time>``, each object under ``<bucket>/<key>``.  Each is then read back and
compared with the index: size, SHA-256 of its bytes, content type, cache control and user
metadata.  The scratch bucket is deleted afterwards, whatever the outcome.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace
from datetime import datetime
from typing import Any

from coldcopy.backup.files import committed, read_index
from coldcopy.context import Context
from coldcopy.core.files import DRILL_SAMPLE, Entry, drill_bucket, drill_sample
from coldcopy.core.verification import week_seed
from coldcopy.errors import ColdCopyError
from coldcopy.restore.files import write_object
from coldcopy.storage.project_files import ProjectStorage
from coldcopy.stream.pipeline import READ_SIZE

log = logging.getLogger(__name__)


def _differences(target: ProjectStorage, bucket: str, e: Entry, want_sha256: str) -> list[str]:
    """What differs between the scratch copy of ``e`` and the snapshot (empty: equal)."""
    meta, chunks = target.open(bucket, f"{e.bucket}/{e.key}", READ_SIZE)
    digest, size = hashlib.sha256(), 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    out = []
    if size != e.size or digest.hexdigest() != want_sha256:
        out.append("its bytes")
    if (e.content_type and meta.content_type != e.content_type) or meta.cache_control != e.cache_control:
        out.append("its content type or cache control")  # no type stored: the endpoint picks one
    if meta.metadata != e.metadata:
        out.append("its user metadata")
    return out


def drill_files(
    ctx: Context, target: ProjectStorage, now: datetime, sample: int = DRILL_SAMPLE
) -> dict[str, Any]:
    """Restore a sample of the newest snapshot into a scratch bucket of ``target`` and compare it;
    ``ok`` False with ``problems`` when an object differs or cannot be restored."""
    commits = committed(ctx.storage)
    if not commits:
        return {"snapshot": None, "ok": True, "sampled": 0, "problems": [], "note": "no files snapshot yet"}
    snap = max(commits)
    index = read_index(ctx.storage, snap, ctx.key, commits[snap])
    chosen = drill_sample(index.entries, sample, week_seed(now))
    bucket = drill_bucket(now)
    problems: list[str] = []
    compared = 0
    target.ensure_bucket(bucket)
    try:
        for e in chosen:
            where = f"{e.bucket}/{e.key[:200]}"
            content = index.contents[e.content]
            try:
                write_object(
                    target,
                    ctx.storage,
                    ctx.key,
                    replace(e, bucket=bucket, key=f"{e.bucket}/{e.key}"),
                    content,
                )
                differs = _differences(target, bucket, e, content.raw_sha256)
            except ColdCopyError as exc:
                problems.append(f"{where} could not be restored: {exc.message}")
                continue
            compared += 1
            problems += [f"{where}: {what} differ from the snapshot" for what in differs]
    finally:
        try:
            target.delete_bucket(bucket)
        except ColdCopyError as exc:
            log.warning("the drill's scratch bucket %s could not be deleted: %s", bucket, exc.message)
    return {
        "snapshot": snap,
        "backup": index.backup,
        "scratch_bucket": bucket,
        "sampled": len(chosen),
        "compared": compared,
        "bytes": sum(e.size for e in chosen),
        "problems": problems,
        "ok": not problems,
    }
