"""A database's shape as a backup records it, and how a restored one is compared with it.  Pure.

The shape (read by ``postgres/shape.py``) is a JSON object: ``schemas``, ``tables`` (kind and RLS
flags), ``policies``, ``triggers``, ``functions``, ``enums``, ``grants`` (per role), ``extensions``,
``cron_jobs``, ``publications``, ``database_settings`` and custom ``roles``.  After every restore
and drill the restored database's shape must equal the recorded one, less what the target cannot
hold (:func:`expected_for`); :func:`differences` lists what differs, for the operator.
"""

from __future__ import annotations

from typing import Any

# Parts compared after a restore; database_settings are applied where the role may set them and
# reported otherwise, so they are not part of the comparison.
COMPARED = (
    "schemas",
    "tables",
    "policies",
    "triggers",
    "functions",
    "enums",
    "grants",
    "extensions",
    "cron_jobs",
    "publications",
    "roles",
)
# Parts where the restored database may hold more than the backup: the platform's extensions of a
# new project, roles (they belong to the whole cluster and are never dropped).
SUPERSET_OK = ("extensions", "roles")


def expected_for(shape: dict[str, Any], *, cron_here: bool, roles_given_back: bool) -> dict[str, Any]:
    """The part of ``shape`` a restore into a target must give back: without pg_cron and its jobs
    where pg_cron cannot live, without custom roles where the roles file is not applied."""
    out = {k: v for k, v in shape.items() if k in COMPARED}
    if not cron_here:
        out.pop("cron_jobs", None)
        out["extensions"] = {k: v for k, v in out.get("extensions", {}).items() if k != "pg_cron"}
    if not roles_given_back:
        out.pop("roles", None)
    return out


def differences(expected: dict[str, Any], actual: dict[str, Any], limit: int = 20) -> list[str]:
    """What ``actual`` lacks or has besides ``expected``, one line each (at most ``limit``)."""
    out: list[str] = []
    for part in sorted(expected):
        _diff(part, expected[part], actual.get(part), out)
    return out[:limit] + ([f"… and {len(out) - limit} more"] if len(out) > limit else [])


def _diff(where: str, want: Any, got: Any, out: list[str]) -> None:
    if want == got:
        return
    if isinstance(want, dict) and isinstance(got, dict):
        for key in sorted(set(want) | set(got)):
            if key not in got:
                out.append(f"{where}: missing {key}")
            elif key not in want:
                if where not in SUPERSET_OK:
                    out.append(f"{where}: unexpected {key}")
            else:
                _diff(f"{where} {key}", want[key], got[key], out)
    elif isinstance(want, list) and isinstance(got, list):
        keyed_want, keyed_got = [_key(x) for x in want], [_key(x) for x in got]
        out += [f"{where}: missing {k}" for k in keyed_want if k not in keyed_got]
        if where not in SUPERSET_OK:
            out += [f"{where}: unexpected {k}" for k in keyed_got if k not in keyed_want]
    elif got is None:
        out.append(f"{where}: missing")
    else:
        out.append(f"{where}: backup {want!r}, restored {got!r}")


def _key(item: Any) -> str:
    if isinstance(item, dict):
        return " ".join(f"{k}={item[k]}" for k in sorted(item))
    return str(item)


def summary(shape: dict[str, Any]) -> str:
    """One line for ``coldcopy show``: how many of each part the backup recorded."""
    if not shape:
        return "not recorded"
    tables = shape.get("tables", {})
    rls = sum(1 for v in tables.values() if " rls" in v)
    grants = shape.get("grants", {})
    members = sum(len(v) for v in shape.get("publications", {}).values())
    return (
        f"{len(shape.get('schemas', []))} schemas, {len(tables)} relations ({rls} with RLS), "
        f"{len(shape.get('policies', {}))} policies, {len(shape.get('triggers', {}))} triggers, "
        f"{len(shape.get('functions', {}))} functions, {len(shape.get('enums', {}))} enums, "
        f"grants to {len(grants)} roles, {len(shape.get('extensions', {}))} extensions, "
        f"{len(shape.get('cron_jobs', []))} cron jobs, {members} published tables, "
        f"{len(shape.get('roles', []))} custom roles"
    )
