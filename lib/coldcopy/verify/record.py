"""Recording a verification: one journal record, carrying forward the latest test restore and the
latest logical PITR drill."""

from __future__ import annotations

from coldcopy.context import Context
from coldcopy.core.times import iso, utc_now
from coldcopy.core.verification import VerifyResult, drill_proof, restore_proof
from coldcopy.errors import ColdCopyError


def record_result(ctx: Context, result: VerifyResult) -> None:
    """Journal the result (best effort: a verification that ran is not failed by its record)."""
    try:
        now = utc_now()
        payload = result.to_dict()
        prev = ctx.catalog.read().verifications.get(result.name)
        payload["restore_proof"] = restore_proof(payload, iso(now), prev)
        payload["pitr_drill"] = drill_proof(payload, iso(now), prev)
        ctx.catalog.record("verification", result.name, payload, when=now)
        ctx.catalog.refresh()
    except ColdCopyError:
        pass
