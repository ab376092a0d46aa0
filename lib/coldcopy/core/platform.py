"""What a hosted platform (Supabase) owns in a database, and which parts of a dump a restore into
such a database gives back.  Pure: no I/O.

On hosted Supabase the connecting role (``postgres``) is not a superuser; the platform owns some
schemas (``auth``, ``storage``, ``extensions`` …) and roles (``supabase_admin`` …), its services
keep sessions open, and pg_cron lives in one database.  A restore into a project's database
therefore never recreates what the platform made: it gives back the user's schemas whole, the
user's rows in the platform's tables, the user's triggers and policies on them, grants, custom
roles and cron jobs (:func:`choose_entries`, :func:`role_statements`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Schemas the platform creates and owns, whatever their owner role is called in a given version.
PLATFORM_SCHEMAS = frozenset(
    {
        "auth",
        "storage",
        "extensions",
        "realtime",
        "_realtime",
        "graphql",
        "graphql_public",
        "pgbouncer",
        "vault",
        "pgsodium",
        "pgsodium_masks",
        "net",
        "supabase_functions",
        "cron",
        "pgtle",
        "_analytics",
        "_supavisor",
        "pg_catalog",
        "information_schema",
    }
)
# Platform schemas whose tables hold the user's rows (sign-ups, identities, buckets, objects …);
# their migration history belongs to the platform version of the target instead.
USER_ROW_SCHEMAS = ("auth", "storage")
PLATFORM_HISTORY_TABLES = frozenset({"auth.schema_migrations", "storage.migrations"})
# The platform's roles, when supautils.reserved_roles cannot be read (a copy outside the platform).
PLATFORM_ROLES = frozenset(
    {
        "supabase_admin",
        "supabase_auth_admin",
        "supabase_storage_admin",
        "supabase_read_only_user",
        "supabase_replication_admin",
        "supabase_realtime_admin",
        "supabase_functions_admin",
        "dashboard_user",
        "pgbouncer",
        "authenticator",
        "anon",
        "authenticated",
        "service_role",
        "pgsodium_keyholder",
        "pgsodium_keyiduser",
        "pgsodium_keymaker",
    }
)
API_ROLES = ("anon", "authenticated", "service_role")
PLATFORM_PUBLICATIONS = frozenset({"supabase_realtime", "supabase_realtime_messages_publication"})


def is_platform_schema(schema: str) -> bool:
    """Whether ``schema`` is the platform's (or PostgreSQL's own)."""
    return schema in PLATFORM_SCHEMAS or schema.startswith(("pg_toast", "pg_temp"))


def holds_user_rows(schema: str, table: str) -> bool:
    """Whether the platform table ``schema.table`` holds the user's rows (auth.users, storage.objects …)."""
    return schema in USER_ROW_SCHEMAS and f"{schema}.{table}" not in PLATFORM_HISTORY_TABLES


@dataclass(frozen=True)
class Reserved:
    """supautils' reserved roles: never created, altered or made members; ``grantable`` ones (a
    ``*`` in the setting, e.g. ``anon*``) may still be granted to other roles."""

    roles: frozenset[str]
    grantable: frozenset[str]
    memberships: frozenset[str] = frozenset()  # roles nobody may be granted (reserved_memberships)


def parse_reserved(roles_setting: str, memberships_setting: str = "") -> Reserved:
    """``Reserved`` from supautils' settings (empty: the platform's usual roles)."""
    items = [r.strip() for r in roles_setting.split(",") if r.strip()]
    if not items:
        return Reserved(PLATFORM_ROLES, frozenset(API_ROLES))
    return Reserved(
        frozenset(r.rstrip("*") for r in items),
        frozenset(r.rstrip("*") for r in items if r.endswith("*")),
        frozenset(r.strip() for r in memberships_setting.split(",") if r.strip()),
    )


@dataclass(frozen=True)
class Target:
    """The database a restore writes into, as far as choosing a dump's entries goes."""

    role: str  # the connecting role
    superuser: bool
    has_platform: bool  # the platform's schemas and roles exist there (a project's own database)
    cron_here: bool  # pg_cron can exist in this database (it is cron.database_name, or no pg_cron)
    owners: frozenset[str] = frozenset()  # roles the connecting role may make owners (its memberships)
    existing_schemas: frozenset[str] = frozenset()


@dataclass(frozen=True)
class TocEntry:
    """One line of ``pg_restore --list``: ``<id>; <tableoid> <oid> <DESC> <schema> <name> <owner>``."""

    line: str
    dump_id: int
    desc: str
    schema: str  # "-" when the object has none
    name: str
    owner: str


# Object descriptions of pg_restore's list, longest first so that "TABLE DATA" wins over "TABLE".
_DESCS = sorted(
    (
        "ACL",
        "AGGREGATE",
        "BLOB",
        "BLOB METADATA",
        "BLOBS",
        "CAST",
        "CHECK CONSTRAINT",
        "COLLATION",
        "COMMENT",
        "CONSTRAINT",
        "CONVERSION",
        "DATABASE",
        "DATABASE PROPERTIES",
        "DEFAULT",
        "DEFAULT ACL",
        "DOMAIN",
        "ENCODING",
        "EVENT TRIGGER",
        "EXTENSION",
        "FK CONSTRAINT",
        "FOREIGN DATA WRAPPER",
        "FOREIGN SERVER",
        "FOREIGN TABLE",
        "FUNCTION",
        "INDEX",
        "INDEX ATTACH",
        "LARGE OBJECT",
        "MATERIALIZED VIEW",
        "MATERIALIZED VIEW DATA",
        "OPERATOR",
        "OPERATOR CLASS",
        "OPERATOR FAMILY",
        "POLICY",
        "PROCEDURE",
        "PROCEDURAL LANGUAGE",
        "PUBLICATION",
        "PUBLICATION TABLE",
        "PUBLICATION TABLES IN SCHEMA",
        "ROW SECURITY",
        "RULE",
        "SCHEMA",
        "SECURITY LABEL",
        "SEQUENCE",
        "SEQUENCE OWNED BY",
        "SEQUENCE SET",
        "SERVER",
        "SHELL TYPE",
        "STATISTICS",
        "STDSTRINGS",
        "SEARCHPATH",
        "SUBSCRIPTION",
        "TABLE",
        "TABLE ATTACH",
        "TABLE DATA",
        "TEXT SEARCH CONFIGURATION",
        "TEXT SEARCH DICTIONARY",
        "TEXT SEARCH PARSER",
        "TEXT SEARCH TEMPLATE",
        "TRANSFORM",
        "TRIGGER",
        "TYPE",
        "USER MAPPING",
        "VIEW",
    ),
    key=len,
    reverse=True,
)
_ENTRY = re.compile(r"^(\d+); \d+ \d+ (.*)$")


def parse_toc(listing: str) -> list[TocEntry]:
    """The entries of ``pg_restore --list`` output (comment lines skipped)."""
    out: list[TocEntry] = []
    for line in listing.splitlines():
        m = _ENTRY.match(line)
        if not m:
            continue
        rest = m.group(2)
        desc = next((d for d in _DESCS if rest.startswith(d + " ")), rest.split(" ", 1)[0])
        fields = rest[len(desc) + 1 :].split(" ")
        schema, owner = fields[0], fields[-1]
        name = " ".join(fields[1:-1])
        out.append(TocEntry(line, int(m.group(1)), desc, schema, name, owner))
    return out


@dataclass
class Selection:
    """The entries a restore applies, and what it leaves out, in words for the operator."""

    keep: list[TocEntry] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)  # what the target cannot hold, said once each
    user_row_tables: list[str] = field(default_factory=list)  # platform tables whose rows come back

    def list_file(self) -> str:
        """The ``pg_restore --use-list`` file: the kept entries, in the dump's order."""
        return "".join(e.line + "\n" for e in self.keep)


def _object_table(entry: TocEntry) -> str:
    """The table a TRIGGER, POLICY, ROW SECURITY … entry belongs to (its name's first word)."""
    return entry.name.split(" ", 1)[0]


def choose_entries(entries: list[TocEntry], target: Target, user_triggers: set[str]) -> Selection:
    """The dump's entries a restore into ``target`` applies.

    Into a project's database (``has_platform``) the platform's own objects are already there: of
    the platform's schemas only the user's rows (TABLE DATA of :func:`holds_user_rows` tables and
    their sequences), the user's triggers (``user_triggers``: "schema.table name") and the policies
    come back.  Into an empty database everything comes back, minus what the connecting role may
    not create there.  The owners the role may not set are removed later, statement by statement
    (:func:`owner_allowed`)."""
    sel = Selection()
    noted: set[str] = set()

    def leave(why: str) -> None:
        if why not in noted:
            noted.add(why)
            sel.left_out.append(why)

    for e in entries:
        if e.desc == "EXTENSION" and e.name == "pg_cron" and not target.cron_here:
            leave("pg_cron and its jobs: pg_cron lives only in the database named by cron.database_name")
            continue
        if e.desc == "COMMENT" and e.name.startswith("EXTENSION ") and not target.superuser:
            continue  # only an extension's owner may comment on it; the comment is the extension's own
        if e.schema == "cron" or (e.desc == "ACL" and e.name.startswith("SCHEMA cron")):
            continue  # cron jobs come back through cron.schedule, never as rows
        if e.desc == "EVENT TRIGGER" and not target.superuser and e.owner != target.role:
            if not target.has_platform:  # in a project's database the platform's own are there
                leave(f"event trigger {e.name} (owned by {e.owner}; only a superuser may create it)")
            continue
        if e.desc == "PUBLICATION" and target.has_platform and e.name in PLATFORM_PUBLICATIONS:
            continue  # the platform's publication exists; its member tables are added one by one
        if e.desc == "DEFAULT ACL" and not (target.superuser or e.owner in target.owners | {target.role}):
            if not target.has_platform:  # in a project's database the platform's own are there already
                leave(f"default privileges of {e.owner} (the connecting role is not a member of it)")
            continue
        if target.has_platform and _is_platform_object(e):
            if e.desc == "TABLE DATA" and holds_user_rows(e.schema, e.name):
                sel.user_row_tables.append(f"{e.schema}.{e.name}")
            elif not _user_part_of_platform(e, user_triggers):
                continue
        elif target.has_platform and e.desc == "SCHEMA" and e.name in target.existing_schemas:
            continue  # kept (never dropped, so that the platform's default privileges in it stay)
        sel.keep.append(e)
    return sel


def _user_part_of_platform(e: TocEntry, user_triggers: set[str]) -> bool:
    """The user's policies, triggers and sequence positions in a platform schema."""
    return (
        e.desc == "POLICY"
        or (e.desc == "TRIGGER" and f"{e.schema}.{e.name}" in user_triggers)
        or (e.desc == "SEQUENCE SET" and e.schema in USER_ROW_SCHEMAS)
    )


def _is_platform_object(e: TocEntry) -> bool:
    if e.schema != "-":
        return is_platform_schema(e.schema)
    if e.desc == "SCHEMA":
        return is_platform_schema(e.name)
    if e.desc in ("ACL", "COMMENT") and e.name.startswith("SCHEMA "):
        return is_platform_schema(e.name.removeprefix("SCHEMA "))
    return False


_OWNER_STMT = re.compile(r"^ALTER [A-Z ]+ .+ OWNER TO (\"(?:[^\"]|\"\")+\"|[a-z_][a-z0-9_$]*);$")


def owner_change(line: str) -> str | None:
    """The new owner of an ``ALTER … OWNER TO role;`` line of pg_restore's SQL, else None."""
    m = _OWNER_STMT.match(line)
    if not m:
        return None
    owner = m.group(1)
    return owner[1:-1].replace('""', '"') if owner.startswith('"') else owner


def owner_allowed(owner: str, target: Target) -> bool:
    """Whether the connecting role may make ``owner`` an owner in ``target``: itself, a role it is a
    member of (into a project's database, where the platform's grants are in place), or any role as
    a superuser."""
    if target.superuser or owner == target.role:
        return True
    return target.has_platform and owner in target.owners


# -- the roles file (pg_dumpall --globals-only) -------------------------------------------------
_IDENT = r"(\"(?:[^\"]|\"\")+\"|[A-Za-z_][A-Za-z0-9_$]*)"
_CREATE = re.compile(rf"^CREATE ROLE {_IDENT};$")
_ALTER_WITH = re.compile(rf"^ALTER ROLE {_IDENT} WITH (.*);$")
_ALTER_SET = re.compile(rf"^ALTER ROLE {_IDENT} (SET .*|IN DATABASE .*);$")
_GRANT = re.compile(rf"^GRANT {_IDENT} TO {_IDENT}(.*?)(?: GRANTED BY {_IDENT})?;$")
_SUPERUSER_ONLY = ("SUPERUSER", "REPLICATION", "BYPASSRLS")


def _unquote(ident: str) -> str:
    return ident[1:-1].replace('""', '"') if ident.startswith('"') else ident


@dataclass
class RolePlan:
    """The statements that give back a dump's custom roles, and what was left out."""

    statements: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)  # the custom roles the file defines


def role_statements(sql: str, *, role: str, superuser: bool, reserved: Reserved) -> RolePlan:
    """The roles file turned into statements the connecting ``role`` may run: roles that exist are
    not created again, reserved roles and the connecting role itself are never touched, and
    attributes only a superuser may set (and GRANTED BY) are dropped unless ``role`` is one."""
    plan = RolePlan()
    untouchable = {role} | (set() if superuser else set(reserved.roles))

    def off_limits(name: str) -> bool:
        return name in untouchable or name.startswith("pg_")

    for raw in sql.splitlines():
        line = raw.strip()
        if m := _CREATE.match(line):
            name = _unquote(m.group(1))
            if off_limits(name):
                continue
            plan.roles.append(name)
            plan.statements.append(
                f"DO $cc$ BEGIN CREATE ROLE {m.group(1)}; "
                "EXCEPTION WHEN duplicate_object THEN NULL; END $cc$;"
            )
        elif m := _ALTER_WITH.match(line):
            name = _unquote(m.group(1))
            if off_limits(name):
                continue
            attrs = m.group(2).split()
            if not superuser:
                dropped = [a for a in attrs if a in _SUPERUSER_ONLY]
                attrs = [a for a in attrs if a.removeprefix("NO") not in _SUPERUSER_ONLY]
                if dropped:
                    plan.left_out.append(f"role {name}: {' '.join(dropped)} (only a superuser may set it)")
            if attrs:
                plan.statements.append(f"ALTER ROLE {m.group(1)} WITH {' '.join(attrs)};")
        elif m := _ALTER_SET.match(line):
            if not off_limits(_unquote(m.group(1))):
                plan.statements.append(line)
        elif m := _GRANT.match(line):
            granted, member = _unquote(m.group(1)), _unquote(m.group(2))
            if (member != role and off_limits(member)) or (not superuser and granted in reserved.memberships):
                continue
            if member == role and (granted in reserved.roles or granted.startswith("pg_")):
                continue  # the platform's grants to the connecting role are the platform's
            if not superuser and granted in reserved.roles and granted not in reserved.grantable:
                continue
            plan.statements.append(f"GRANT {m.group(1)} TO {m.group(2)}{m.group(3)};")
    return plan
