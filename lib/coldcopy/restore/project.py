"""A restore that does not replace the database but gives the backup back inside it, in one
transaction: into a hosted project's database (Supabase), where the platform's schemas, roles and
services stay as they are, and into an empty database made for it (``--target-db``, a verification
scratch).

The dump's table of contents is read first (:mod:`coldcopy.restore.toc`) and the entries the target
can hold are chosen (:func:`coldcopy.core.platform.choose_entries`).  Then one psql session runs:
the custom roles from the saved roles file; in a project's database, the user's objects, rows,
policies, triggers and cron jobs removed; ``pg_restore --use-list`` of the chosen entries (owners the
connecting role may not set left out); the cron jobs through ``cron.schedule``; the database
settings the role may set; and then the check: the restored shape and row counts against the
manifest's.  Only if they are equal does it commit; otherwise it rolls back, and the database is
exactly as it was.  User triggers do not fire (``session_replication_role = replica``), so audit
rows and profiles are not made a second time.
"""

from __future__ import annotations

import json
import logging
import secrets
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coldcopy.backup.reader import BackupReader
from coldcopy.config import Settings, redact
from coldcopy.core.erasure import ERASED_SETTING, SUBJECTS_SETTING, Erasure, apply_sql, subjects_json
from coldcopy.core.platform import (
    RolePlan,
    Selection,
    Target,
    choose_entries,
    is_platform_schema,
    owner_allowed,
    owner_change,
    parse_toc,
    role_statements,
)
from coldcopy.core.shape import SUPERSET_OK, differences, expected_for
from coldcopy.core.sql import qualified, quote_ident, quote_literal
from coldcopy.errors import DatabaseError
from coldcopy.postgres.client import Postgres
from coldcopy.postgres.shape import USER_NS_SQL, Facts, shape_sql
from coldcopy.postgres.tools import StderrTail, die_with_parent
from coldcopy.restore.erasures import Applied
from coldcopy.restore.toc import read_toc
from coldcopy.stream.pipeline import Progress

log = logging.getLogger(__name__)

_SHAPE_MARK = "coldcopy-restored-shape "
_COUNTS_MARK = "coldcopy-restored-counts "
_UNSET_MARK = "coldcopy-not-set:"
_NOT_GRANTED_MARK = "coldcopy-not-granted:"
_ERASED_MARK = "coldcopy-erased "


class ShapeMismatch(DatabaseError):
    """The restored database differs from the backup's recorded shape or row counts (rolled back)."""


@dataclass
class ProjectRestore:
    """What a restore into a project's (or an empty) database did, and left out."""

    left_out: list[str] = field(default_factory=list)
    settings_to_apply: list[str] = field(default_factory=list)  # SQL the operator runs (or asks for)
    tables_checked: int = 0
    user_rows_from: list[str] = field(default_factory=list)
    roles_applied: list[str] = field(default_factory=list)
    erased: Applied = field(default_factory=Applied)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.erased.to_dict(),
            "left_out": self.left_out,
            "settings_to_apply": self.settings_to_apply,
            "tables_checked": self.tables_checked,
            "platform_tables_restored": self.user_rows_from,
            "roles_given_back": self.roles_applied,
        }


def target_of(facts: Facts, *, cron_available: bool) -> Target:
    """The ``Target`` a restore into the database ``facts`` describes chooses entries for."""
    return Target(
        role=facts.role,
        superuser=facts.superuser,
        has_platform=facts.platform == "supabase",
        cron_here=cron_available and facts.cron_here,
        owners=facts.memberships,
        existing_schemas=facts.schemas,
    )


def restore_into(
    reader: BackupReader,
    pg: Postgres,
    dbname: str,
    facts: Facts,
    settings: Settings,
    *,
    cron_available: bool,
    progress: Progress | None = None,
    erasures: list[Erasure] | None = None,
) -> ProjectRestore:
    """Give the backup back inside ``dbname`` (whose ``facts`` were read on it) in one transaction
    that commits only when the restored shape and row counts equal the manifest's; ``erasures``
    are applied in that transaction after the rows are counted and before the shape is compared."""
    erasures = erasures or []
    manifest = reader.manifest
    target = target_of(facts, cron_available=cron_available)
    listing = read_toc(reader, pg, settings)
    user_triggers = {k for k in manifest.shape.get("triggers", {}) if is_platform_schema(k.split(".", 1)[0])}
    selection = choose_entries(parse_toc(listing), target, user_triggers)
    roles = _roles(reader, facts)
    result = ProjectRestore(
        left_out=selection.left_out + roles.left_out, user_rows_from=selection.user_row_tables
    )
    result.roles_applied = roles.roles
    expected = expected_for(manifest.shape, cron_here=target.cron_here, roles_given_back=bool(roles.roles))
    jobs = _cron_jobs(manifest.shape, manifest.database, dbname, facts, result) if target.cron_here else []
    if not target.cron_here and manifest.shape.get("cron_jobs"):
        result.left_out.append(
            f"{len(manifest.shape['cron_jobs'])} cron job(s): pg_cron cannot run in {dbname}"
        )
    if "cron_jobs" in expected:
        expected["cron_jobs"] = jobs
    counts = _counts_to_check(manifest.tables, manifest.row_counts, selection)
    result.tables_checked = len(counts)
    script = _Script(
        prologue=_prologue(roles, target, manifest.shape.get("schemas", [])),
        epilogue=_epilogue(
            jobs, manifest.shape.get("database_settings", []), dbname, expected, counts, facts, erasures
        ),
        target=target,
        lenient_grants=not (target.superuser or target.has_platform),
    )
    refused: dict[str, int] = {}
    out, unset = _run(reader, pg, dbname, selection, script, settings, progress, refused)
    result.settings_to_apply = unset
    result.left_out += [
        f"ownership by {owner}: {n} object(s) are owned by {facts.role} instead"
        for owner, n in sorted(refused.items())
    ]
    _judge(out, expected, counts)
    result.erased = _erased(out, erasures)
    return result


def _erased(out: str, erasures: list[Erasure]) -> Applied:
    if not erasures:
        return Applied()
    text = next((ln[len(_ERASED_MARK) :] for ln in out.splitlines() if ln.startswith(_ERASED_MARK)), None)
    return Applied.from_setting(erasures, text)


def _roles(reader: BackupReader, facts: Facts) -> RolePlan:
    if not reader.manifest.globals:
        return RolePlan(left_out=["custom roles: the backup has no roles file"])
    sql = reader.read_small(reader.manifest.globals).decode()
    return role_statements(sql, role=facts.role, superuser=facts.superuser, reserved=facts.reserved)


def _cron_jobs(
    shape: dict[str, Any], source_db: str, dbname: str, facts: Facts, result: ProjectRestore
) -> list[dict[str, Any]]:
    """The recorded cron jobs as they are scheduled here: a job of the backed-up database runs in
    the restored one; jobs of another role come back only for a superuser."""
    jobs = []
    for job in shape.get("cron_jobs", []):
        if job["username"] != facts.role and not facts.superuser:
            result.left_out.append(
                f"cron job {job['name']!r} of role {job['username']} (not ours to schedule)"
            )
            continue
        jobs.append({**job, "database": dbname if job["database"] == source_db else job["database"]})
    return jobs


def _counts_to_check(tables: dict[str, int], how: str, selection: Selection) -> dict[str, int]:
    if how != "exact":
        return {}
    restored = set(selection.user_row_tables)
    return {t: n for t, n in tables.items() if t in restored or not is_platform_schema(t.split(".", 1)[0])}


def _literal(text: str) -> str:
    tag = "cc" + secrets.token_hex(4)
    return f"${tag}${text}${tag}$"


# In a project's database: the user's part removed, in the same transaction that gives it back.
_CLEAR_USER_PART = """
DO $cc$
DECLARE r record;
BEGIN
  -- the user's schemas: emptied (kept, with the platform's default privileges in them) or dropped
  FOR r IN SELECT n.nspname FROM pg_namespace n WHERE {user_ns} AND NOT n.nspname = ANY({keep})
  LOOP EXECUTE format('DROP SCHEMA %I CASCADE', r.nspname); END LOOP;
  FOR r IN SELECT e.extname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
           WHERE {user_ns}
  LOOP EXECUTE format('DROP EXTENSION IF EXISTS %I CASCADE', r.extname); END LOOP;
  FOR r IN SELECT n.nspname, c.relname, c.relkind
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE {user_ns} AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND NOT c.relispartition
             AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                             AND d.objid = c.oid AND d.deptype IN ('a', 'i', 'e'))
  LOOP EXECUTE format('DROP %s IF EXISTS %I.%I CASCADE',
    CASE r.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'f' THEN 'FOREIGN TABLE'
                   WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, r.nspname, r.relname); END LOOP;
  FOR r IN SELECT n.nspname, p.proname, p.prokind, pg_get_function_identity_arguments(p.oid) AS args
           FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {user_ns}
  LOOP EXECUTE format('DROP %s IF EXISTS %I.%I(%s) CASCADE',
    CASE r.prokind WHEN 'a' THEN 'AGGREGATE' ELSE 'ROUTINE' END, r.nspname, r.proname, r.args); END LOOP;
  FOR r IN SELECT n.nspname, t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
           LEFT JOIN pg_class c ON c.oid = t.typrelid
           WHERE {user_ns} AND t.typtype IN ('e', 'd', 'r', 'c') AND (t.typtype <> 'c' OR c.relkind = 'c')
  LOOP EXECUTE format('DROP TYPE IF EXISTS %I.%I CASCADE', r.nspname, r.typname); END LOOP;
  -- schema privileges back to their initial state; the dump grants the others again
  FOR r IN SELECT n.nspname, CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                             ELSE quote_ident(pg_get_userbyid(a.grantee)) END AS who
           FROM pg_namespace n, aclexplode(n.nspacl) a WHERE {user_ns} AND a.grantee <> n.nspowner
             AND NOT EXISTS (SELECT 1 FROM pg_init_privs i, aclexplode(i.initprivs) ia
                             WHERE i.classoid = 'pg_namespace'::regclass AND i.objoid = n.oid
                               AND ia.grantee = a.grantee AND ia.privilege_type = a.privilege_type)
  LOOP EXECUTE format('REVOKE ALL ON SCHEMA %I FROM %s', r.nspname, r.who); END LOOP;
  -- our own default privileges: objects the restore creates get exactly the dump's privileges,
  -- and the dump's DEFAULT ACL entries (applied last) give these back as they were
  FOR r IN SELECT CASE WHEN d.defaclnamespace = 0 THEN '' ELSE format(' IN SCHEMA %I', n.nspname) END AS sch,
                  CASE d.defaclobjtype WHEN 'r' THEN 'TABLES' WHEN 'S' THEN 'SEQUENCES'
                                       WHEN 'f' THEN 'FUNCTIONS'
                                       WHEN 'T' THEN 'TYPES' ELSE 'SCHEMAS' END AS kind,
                  CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                       ELSE quote_ident(pg_get_userbyid(a.grantee)) END AS who
           FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace,
                aclexplode(d.defaclacl) a
           WHERE d.defaclrole = (SELECT oid FROM pg_roles WHERE rolname = current_user)
             AND (d.defaclnamespace = 0 OR {user_ns}) AND a.grantee <> d.defaclrole
  LOOP EXECUTE format('ALTER DEFAULT PRIVILEGES%s REVOKE ALL ON %s FROM %s', r.sch, r.kind, r.who); END LOOP;
  -- the user's rows in the platform's tables, and the user's policies and triggers on them
  FOR r IN SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname IN ('auth', 'storage') AND c.relkind IN ('r', 'p') AND NOT c.relispartition
             AND n.nspname || '.' || c.relname NOT IN ('auth.schema_migrations', 'storage.migrations')
  LOOP EXECUTE format('DELETE FROM %I.%I', r.nspname, r.relname); END LOOP;
  FOR r IN SELECT n.nspname, c.relname, p.polname FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE NOT {user_ns} AND NOT EXISTS (SELECT 1 FROM pg_depend d
             WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
  LOOP EXECUTE format('DROP POLICY %I ON %I.%I', r.polname, r.nspname, r.relname); END LOOP;
  FOR r IN SELECT evtname FROM pg_event_trigger
           WHERE evtowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)
  LOOP EXECUTE format('DROP EVENT TRIGGER %I', r.evtname); END LOOP;
  IF to_regclass('cron.job') IS NOT NULL THEN
    PERFORM cron.unschedule(jobid) FROM cron.job WHERE username = current_user;
  END IF;
END
$cc$;
"""


def _prologue(roles: RolePlan, target: Target, backup_schemas: list[str]) -> str:
    parts = ["\\set ON_ERROR_STOP on", "BEGIN;", "SET session_replication_role = replica;", *roles.statements]
    if target.has_platform:
        keep = "ARRAY[" + ",".join(_literal(s) for s in backup_schemas) + "]::name[]"
        parts.append(_CLEAR_USER_PART.format(user_ns=USER_NS_SQL, keep=keep))
    return "\n".join(parts) + "\n"


def _epilogue(
    jobs: list[dict[str, Any]],
    db_settings: list[str],
    dbname: str,
    expected: dict[str, Any],
    counts: dict[str, int],
    facts: Facts,
    erasures: list[Erasure],
) -> str:
    """Cron jobs, database settings, the row counts as restored, the erasures (as ordinary
    deletes: the tables' triggers and foreign keys act as on the live database), then the check
    that decides COMMIT or ROLLBACK."""
    parts = ["SELECT pg_catalog.set_config('search_path', '', false);"]
    for job in jobs:
        name, schedule, command = (_literal(str(job[k])) for k in ("name", "schedule", "command"))
        if facts.superuser:  # may schedule for another role and database
            where = ", ".join(_literal(str(job[k])) for k in ("database", "username"))
            active = "true" if job["active"] else "false"
            parts.append(
                f"SELECT cron.schedule_in_database({name}, {schedule}, {command}, {where}, {active});"
            )
        else:  # cron.schedule: in this database, as this role (only those are given back, see _cron_jobs)
            parts.append(f"SELECT cron.schedule({name}, {schedule}, {command});")
            if not job["active"]:
                parts.append(
                    f"SELECT cron.alter_job(jobid, active => false) FROM cron.job WHERE jobname = {name};"
                )
    for item in db_settings:
        name, _, value = item.partition("=")
        sql = f"ALTER DATABASE {quote_ident(dbname)} SET {quote_ident(name)} = {quote_literal(value)}"
        setting, wanted = quote_literal(name), quote_literal(value)
        parts.append(
            f"DO $cc$ BEGIN IF current_setting({setting}, true) IS DISTINCT FROM {wanted} "
            f"THEN EXECUTE {quote_literal(sql)}; END IF; EXCEPTION WHEN insufficient_privilege OR "
            f"invalid_parameter_value OR cant_change_runtime_param THEN RAISE WARNING '{_UNSET_MARK}%', "
            f"{quote_literal(sql)}; END $cc$;"
        )
    keys = "ARRAY[" + ",".join(quote_literal(k) for k in sorted(expected)) + "]"
    actual = shape_sql("cron_jobs" in expected, facts.reserved.roles)
    loose = "ARRAY[" + ",".join(quote_literal(k) for k in sorted(set(expected) & set(SUPERSET_OK))) + "]"
    count_sql = (
        "jsonb_build_object("
        + ", ".join(f"{quote_literal(t)}, (SELECT count(*) FROM ONLY {qualified(t)})" for t in sorted(counts))
        + ")"
        if counts
        else "'{}'::jsonb"
    )
    parts.append(f"SELECT ({count_sql})::text AS cc_counts \\gset")
    if erasures:
        parts += [
            "SET session_replication_role = origin;",
            # psql cannot bind a parameter (before 16): the subjects go in this one SELECT, which
            # cannot fail, so no server log of a failing statement holds them
            f"SELECT set_config('{SUBJECTS_SETTING}', {quote_literal(subjects_json(erasures))}, true)"
            " AS cc_subjects_set \\gset",
            apply_sql(erasures),
            "SET session_replication_role = replica;",
            f"SELECT current_setting('{ERASED_SETTING}', true) AS cc_erased \\gset",
            f"\\echo {_ERASED_MARK}:cc_erased",
        ]
    parts.append(
        f"""SELECT a::text AS cc_actual, c::text AS cc_counts,
  (a - {loose}::text[]) = (e - {loose}::text[])
  AND (SELECT bool_and(coalesce(a -> k, 'null') @> (e -> k)) FROM unnest({loose}::text[]) k)
  AND c = {_literal(json.dumps(counts))}::jsonb AS cc_same
FROM (SELECT (SELECT coalesce(jsonb_object_agg(key, value), '{{}}') FROM jsonb_each(({actual})::jsonb)
              WHERE key = ANY({keys})) AS a,
             {_literal(json.dumps(expected))}::jsonb AS e,
             :'cc_counts'::jsonb AS c) x \\gset
\\if :cc_same
COMMIT;
\\else
ROLLBACK;
\\echo {_SHAPE_MARK}:cc_actual
\\echo {_COUNTS_MARK}:cc_counts
\\endif
"""
    )
    return "\n".join(parts) + "\n"


@dataclass(frozen=True)
class _Script:
    prologue: str
    epilogue: str
    target: Target
    # Into an empty database without superuser: a privilege on an object the role does not own
    # there (an extension's functions) is reported, not fatal; the shape check still compares
    # the user's schemas' grants.
    lenient_grants: bool = False


def _tolerant(statement: str) -> str:
    run, said = quote_literal(statement.rstrip(";")), quote_literal(statement)
    return (
        f"DO $cc$ BEGIN EXECUTE {run}; EXCEPTION WHEN insufficient_privilege OR undefined_object "
        f"THEN RAISE WARNING '{_NOT_GRANTED_MARK}%', {said}; END $cc$;\n"
    )


def _run(
    reader: BackupReader,
    pg: Postgres,
    dbname: str,
    selection: Selection,
    script: _Script,
    settings: Settings,
    progress: Progress | None,
    refused: dict[str, int],
) -> tuple[str, list[str]]:
    """The dump's chosen entries through pg_restore (as SQL) into one psql session, between the
    prologue and the epilogue.  Returns psql's output and the settings it could not apply; counts
    in ``refused`` the objects per owner the connecting role could not give them to."""
    env = pg.libpq_env(dbname)
    with tempfile.TemporaryDirectory(prefix="coldcopy-restore-") as tmp:
        list_file = Path(tmp) / "entries.list"
        list_file.write_text(selection.list_file())
        restore = subprocess.Popen(
            [pg.tool("pg_restore").path, f"--use-list={list_file}", "--file=-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            preexec_fn=die_with_parent,
        )
        psql = subprocess.Popen(
            [pg.tool("psql").path, "--no-psqlrc", "--quiet", "--no-password", f"--dbname={dbname}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            preexec_fn=die_with_parent,
        )
        assert restore.stdin and restore.stdout and restore.stderr
        assert psql.stdin and psql.stdout and psql.stderr
        restore_errors, psql_errors = StderrTail(restore.stderr), StderrTail(psql.stderr, keep=400)
        output: list[bytes] = []
        reading = threading.Thread(target=lambda: output.extend(psql.stdout or []), daemon=True)
        reading.start()
        feed_error: list[BaseException] = []
        owners: list[bytes] = []

        def feed() -> None:
            try:
                reader.stream(reader.manifest.data, restore.stdin.write, progress)  # type: ignore[union-attr]
                restore.stdin.close()  # type: ignore[union-attr]
            except BrokenPipeError:
                pass  # pg_restore stopped reading: its exit code says why
            except BaseException as exc:  # noqa: BLE001 - reported below, after the children stop
                feed_error.append(exc)
                restore.kill()

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        try:
            psql.stdin.write(script.prologue.encode())
            in_copy = False
            for line in restore.stdout:
                if in_copy:  # rows of a COPY: written as they are, never read as statements
                    psql.stdin.write(line)
                    in_copy = line != b"\\.\n"
                    continue
                text = line.decode(errors="replace").rstrip("\n")
                in_copy = text.startswith("COPY ") and text.endswith("FROM stdin;")
                owner = owner_change(text)
                if owner is None and script.lenient_grants and text.startswith(("GRANT ", "REVOKE ")):
                    psql.stdin.write(_tolerant(text).encode())
                elif owner is None:
                    psql.stdin.write(line)
                elif owner_allowed(owner, script.target):
                    owners.append(line)  # after the privileges, which pg_restore applies last
                else:
                    refused[owner] = refused.get(owner, 0) + 1
            restore_rc = restore.wait()
            feeder.join()
            if feed_error or restore_rc != 0:
                psql.kill()  # the transaction is rolled back: nothing changed
            else:
                psql.stdin.write(b"".join(owners))
                psql.stdin.write(script.epilogue.encode())
            psql.stdin.close()
        except BrokenPipeError:
            restore.kill()  # psql stopped on an error: the transaction is rolled back
            restore.wait()
            feeder.join()
        except BaseException:
            restore.kill()
            psql.kill()
            raise
        psql_rc = psql.wait()
        reading.join(timeout=30)
    if feed_error:
        raise feed_error[0]
    if restore.returncode != 0:
        raise DatabaseError(
            f"pg_restore failed (exit {restore.returncode}): "
            f"{redact(restore_errors.text(), settings)[-800:]}",
            "the database was left as it was",
        )
    if psql_rc != 0:
        raise DatabaseError(
            "the restore failed and was rolled back: "
            + redact(_first_error(psql_errors.text()), settings)[-800:],
            "the database was left as it was",
        )
    unset = [ln.split(_UNSET_MARK, 1)[1].strip() for ln in psql_errors.lines if _UNSET_MARK in ln]
    not_granted = sum(1 for ln in psql_errors.lines if _NOT_GRANTED_MARK in ln)
    if not_granted:
        refused["(privileges)"] = not_granted
    return b"".join(output).decode(errors="replace"), unset


def _first_error(text: str) -> str:
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "ERROR:" in line:
            return "\n".join(lines[i : i + 3])
    return text


def _judge(out: str, expected: dict[str, Any], counts: dict[str, int]) -> None:
    """Raise with the differences when psql rolled back because the check failed."""
    shape = next((ln[len(_SHAPE_MARK) :] for ln in out.splitlines() if ln.startswith(_SHAPE_MARK)), None)
    if shape is None:
        return
    got_counts = next(
        (ln[len(_COUNTS_MARK) :] for ln in out.splitlines() if ln.startswith(_COUNTS_MARK)), "{}"
    )
    diffs = differences(expected, json.loads(shape))
    got = json.loads(got_counts)
    diffs += [
        f"rows of {t}: backup {n}, restored {got.get(t)}"
        for t, n in sorted(counts.items())
        if got.get(t) != n
    ]
    raise ShapeMismatch(
        "the restored database differs from the backup, so the restore was rolled back:\n  "
        + "\n  ".join(diffs or ["(no difference found in the parts compared; see the server log)"]),
        "the database was left as it was; report this with the output of coldcopy show",
    )
