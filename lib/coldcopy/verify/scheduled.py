"""The weekly verification job: test-restore what was never test-restored, and a sample of the rest;
with files snapshots on, restore a sample of the newest one's files into a scratch bucket
(``verify.files_drill``).

Base backups are among them: :func:`coldcopy.verify.run.run_verify` drills them.  When a change
archive exists, a logical PITR drill (:mod:`coldcopy.verify.pitr_drill`) runs too.
"""

from __future__ import annotations

import random
from datetime import datetime
from typing import Any

from coldcopy.config import Settings
from coldcopy.context import Context, open_context
from coldcopy.core.times import utc_now
from coldcopy.core.verification import VerifyResult, schedule_selection, week_seed
from coldcopy.errors import NotFoundError
from coldcopy.storage.project_files import open_project_storage
from coldcopy.verify.files_drill import drill_files
from coldcopy.verify.pitr_drill import run_pitr_drill
from coldcopy.verify.run import run_verify


def run_scheduled(
    settings: Settings,
    now: datetime | None = None,
    *,
    ctx: Context | None = None,
    rng: random.Random | None = None,
) -> dict[str, Any]:
    """The weekly job: test-restore (level ``restore``) what is new, re-check a sample of older ones,
    and drill the change archive (``rng`` picks its target) when there is one."""
    now = now or utc_now()
    ctx = ctx or open_context(settings)
    cat = ctx.catalog.read()
    if not cat.entries():
        raise NotFoundError("there is no backup to verify", "take a backup first (`coldcopy backup`)")
    new, sampled = schedule_selection(
        cat.entries(), cat.verifications, settings.verify_sample_older, week_seed(now)
    )
    results = []
    for name in [*new, *sampled]:
        r = run_verify(settings, name, level="restore", ctx=ctx)
        results.append(
            {
                "name": name,
                "ok": r.ok,
                "why": "new" if name in new else "sample",
                "failed": [c.name for c in r.checks if not c.ok],
                "measurement": r.measurement,
            }
        )
    drill = run_pitr_drill(settings, rng=rng, ctx=ctx)
    # The files: a sample of the newest snapshot restored into a scratch bucket and compared.
    files = drill_files(ctx, open_project_storage(settings), now) if settings.files_configured else None
    return {
        "name": results[0]["name"] if results else None,  # the newest backup verified
        "level": "restore",
        "week": week_seed(now),
        "new": new,
        "sampled": sampled,
        "results": results,
        "pitr_drill": None if drill is None else drill_summary(drill),
        "files": files,
        "ok": all(r["ok"] for r in results)
        and (drill is None or drill.ok)
        and (files is None or files["ok"]),
    }


def drill_summary(drill: VerifyResult) -> dict[str, Any]:
    """A drill as the job's report shows it."""
    return {
        "name": drill.name,
        "ok": drill.ok,
        "failed": [f"{c.name}: {c.detail}" for c in drill.checks if not c.ok],
        "measurement": drill.measurement,
    }
