"""What a database is, beyond its rows: the platform it runs on and its *shape* (schemas, RLS
flags, policies, triggers, functions, grants, enum types, extensions, cron jobs, publication
membership, custom roles), read by one SQL query.

The same query text runs through pg8000 when a backup records the shape, after a plain restore
on the staging database, and inside the single transaction of a restore into a project's database
(``restore/project.py``), where psql compares it with the expected shape before committing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pg8000.native

from coldcopy.core.platform import PLATFORM_ROLES, PLATFORM_SCHEMAS, Reserved, parse_reserved

_PLATFORM = "ARRAY[" + ", ".join(f"'{s}'" for s in sorted(PLATFORM_SCHEMAS)) + "]::name[]"
# The user's schemas, for ``n`` a pg_namespace row: neither the platform's nor PostgreSQL's own.
USER_NS_SQL = f"(n.nspname <> ALL ({_PLATFORM}) AND n.nspname !~ '^pg_')"


def _not_ext(catalog: str, oid: str) -> str:
    return (
        f"NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = '{catalog}'::regclass "
        f"AND d.objid = {oid} AND d.deptype = 'e')"
    )


def _who(col: str) -> str:
    return f"CASE WHEN {col} = 0 THEN 'PUBLIC' ELSE pg_get_userbyid({col}) END"


# Grants per grantee: "<kind> <object> <privileges>", privileges in aclitem letters (r SELECT,
# a INSERT, w UPDATE, d DELETE, D TRUNCATE, x REFERENCES, t TRIGGER, X EXECUTE, U USAGE, C CREATE,
# m MAINTAIN; * after one: with grant option).  The owner's own privileges are left out, so that an
# object another role owns after a restore compares equal.
_LETTER = (
    "CASE a.privilege_type WHEN 'SELECT' THEN 'r' WHEN 'INSERT' THEN 'a' WHEN 'UPDATE' THEN 'w' "
    "WHEN 'DELETE' THEN 'd' WHEN 'TRUNCATE' THEN 'D' WHEN 'REFERENCES' THEN 'x' WHEN 'TRIGGER' THEN 't' "
    "WHEN 'EXECUTE' THEN 'X' WHEN 'USAGE' THEN 'U' WHEN 'CREATE' THEN 'C' WHEN 'MAINTAIN' THEN 'm' "
    "ELSE a.privilege_type END || CASE WHEN a.is_grantable THEN '*' ELSE '' END"
)
_GRANTS = f"""
  SELECT {_who("a.grantee")} AS grantee,
         k || ' ' || obj || ' ' || string_agg(z.l, '' ORDER BY z.l COLLATE "C") AS g
  FROM (
    SELECT 'table' AS k, n.nspname || '.' || c.relname AS obj, c.relowner AS owner,
           coalesce(c.relacl, acldefault(CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::"char",
                                         c.relowner)) AS acl
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND {USER_NS_SQL} AND {_not_ext("pg_class", "c.oid")}
    UNION ALL
    SELECT 'schema', n.nspname, n.nspowner, coalesce(n.nspacl, acldefault('n', n.nspowner))
    FROM pg_namespace n WHERE {USER_NS_SQL}
    UNION ALL
    SELECT 'function',
           n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
           p.proowner, coalesce(p.proacl, acldefault('f', p.proowner))
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE {USER_NS_SQL} AND {_not_ext("pg_proc", "p.oid")}
  ) o, aclexplode(o.acl) a, LATERAL (SELECT {_LETTER} AS l) z
  WHERE a.grantee <> o.owner
  GROUP BY a.grantee, k, obj
"""

_CRON = """'cron_jobs', (SELECT coalesce(jsonb_agg(jsonb_build_object('name', jobname, 'schedule', schedule,
      'command', command, 'database', database, 'username', username, 'active', active)
      ORDER BY jobname, command), '[]') FROM cron.job),"""


def shape_sql(with_cron: bool, reserved: frozenset[str]) -> str:
    """One SELECT returning the database's shape as JSON text (``with_cron``: pg_cron is here;
    ``reserved``: the platform's roles, which are not custom roles)."""
    not_custom = "ARRAY[" + ", ".join(f"'{r}'" for r in sorted(reserved | PLATFORM_ROLES)) + "]::name[]"
    return f"""
SELECT jsonb_build_object(
  'extensions', (SELECT coalesce(jsonb_object_agg(e.extname, n.nspname), '{{}}') FROM pg_extension e
      JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname <> 'plpgsql'),
  'schemas', (SELECT coalesce(jsonb_agg(n.nspname ORDER BY n.nspname), '[]') FROM pg_namespace n
      WHERE {USER_NS_SQL}),
  'tables', (SELECT coalesce(jsonb_object_agg(n.nspname || '.' || c.relname,
      c.relkind::text || CASE WHEN c.relrowsecurity THEN ' rls' ELSE '' END
                || CASE WHEN c.relforcerowsecurity THEN ' force' ELSE '' END), '{{}}')
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND {USER_NS_SQL}
        AND {_not_ext("pg_class", "c.oid")}),
  'policies', (SELECT coalesce(jsonb_object_agg(n.nspname || '.' || c.relname || ' ' || p.polname,
      concat_ws(' ', CASE WHEN p.polpermissive THEN 'permissive' ELSE 'restrictive' END, p.polcmd::text,
        (SELECT string_agg({_who("r")}, ',' ORDER BY 1) FROM unnest(p.polroles) r),
        'using', pg_get_expr(p.polqual, p.polrelid), 'check', pg_get_expr(p.polwithcheck, p.polrelid))),
      '{{}}')
      FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE {_not_ext("pg_class", "c.oid")}),
  'triggers', (SELECT coalesce(jsonb_object_agg(n.nspname || '.' || c.relname || ' ' || t.tgname,
      pg_get_triggerdef(t.oid) || CASE t.tgenabled WHEN 'D' THEN ' (disabled)' WHEN 'A' THEN ' (always)'
        WHEN 'R' THEN ' (replica)' ELSE '' END), '{{}}')
      FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
      JOIN pg_proc f ON f.oid = t.tgfoid JOIN pg_namespace fn ON fn.oid = f.pronamespace
      WHERE NOT t.tgisinternal AND {_not_ext("pg_class", "c.oid")}
        AND ({USER_NS_SQL} OR (fn.nspname <> ALL ({_PLATFORM}) AND fn.nspname !~ '^pg_'))),
  'functions', (SELECT coalesce(jsonb_object_agg(n.nspname || '.' || p.proname || '('
      || pg_get_function_identity_arguments(p.oid) || ')',
      p.prokind::text || CASE WHEN p.prosecdef THEN ' definer' ELSE '' END || ' ' || p.provolatile::text
        || ' ' || md5(coalesce(p.prosrc, '') || coalesce(pg_get_function_result(p.oid), ''))
        || coalesce(' ' || array_to_string(p.proconfig, ','), '')), '{{}}')
      FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
      WHERE {USER_NS_SQL} AND {_not_ext("pg_proc", "p.oid")}),
  'enums', (SELECT coalesce(jsonb_object_agg(n.nspname || '.' || t.typname,
      (SELECT jsonb_agg(e.enumlabel ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = t.oid)),
      '{{}}')
      FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
      WHERE t.typtype = 'e' AND {USER_NS_SQL} AND {_not_ext("pg_type", "t.oid")}),
  'grants', (SELECT coalesce(jsonb_object_agg(grantee, gs), '{{}}') FROM (
      SELECT grantee, jsonb_agg(g ORDER BY g) AS gs FROM ({_GRANTS}) x GROUP BY grantee) y),
  {_CRON if with_cron else ""}
  'publications', (SELECT coalesce(jsonb_object_agg(p.pubname, (SELECT coalesce(jsonb_agg(
      pt.schemaname || '.' || pt.tablename ORDER BY pt.schemaname, pt.tablename), '[]')
      FROM pg_publication_tables pt WHERE pt.pubname = p.pubname)), '{{}}') FROM pg_publication p),
  'database_settings', (SELECT coalesce(jsonb_agg(x ORDER BY x), '[]') FROM pg_db_role_setting s,
      unnest(s.setconfig) x WHERE s.setrole = 0
        AND s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())),
  'roles', (SELECT coalesce(jsonb_agg(rolname ORDER BY rolname), '[]') FROM pg_roles
      WHERE rolname !~ '^pg_' AND NOT rolsuper AND rolname <> current_user AND rolname <> ALL ({not_custom}))
)::text"""


@dataclass(frozen=True)
class Facts:
    """The connecting role and the platform, as the database shows them."""

    role: str
    superuser: bool
    attributes: dict[str, bool]
    platform: str  # "supabase" or "postgresql"
    reserved: Reserved
    cron_database: str  # cron.database_name, "" without pg_cron
    cron_installed: bool  # the pg_cron extension exists in this database
    cron_available: bool  # the server has pg_cron (it may be created here if cron_here)
    database: str
    memberships: frozenset[str]
    schemas: frozenset[str]

    @property
    def cron_here(self) -> bool:
        return not self.cron_database or self.cron_database == self.database

    def to_dict(self) -> dict[str, Any]:
        return {"platform": self.platform, "role": self.role, "attributes": self.attributes}


def read_facts(conn: pg8000.native.Connection) -> Facts:
    """The platform, detected from the database itself: Supabase when its roles and schemas are
    there (supabase_admin, auth owned by it or by supabase_auth_admin)."""
    row = conn.run(
        "SELECT r.rolname, r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolreplication, r.rolbypassrls, "
        "current_setting('supautils.reserved_roles', true), "
        "current_setting('supautils.reserved_memberships', true), "
        "current_setting('cron.database_name', true), current_database(), "
        "EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_cron'), "
        "EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_cron'), "
        "EXISTS (SELECT 1 FROM pg_namespace n JOIN pg_roles o ON o.oid = n.nspowner WHERE n.nspname = 'auth' "
        "AND o.rolname IN ('supabase_admin', 'supabase_auth_admin')) "
        "FROM pg_roles r WHERE r.rolname = current_user"
    )[0]
    name, su, createrole, createdb, replication, bypassrls = row[:6]
    reserved_setting, memberships_setting, cron_db, database, cron_installed, cron_available, supabase = row[
        6:
    ]
    member_of = conn.run(
        "SELECT rolname FROM pg_roles "
        "WHERE rolname <> current_user AND pg_has_role(current_user, oid, 'MEMBER')"
    )
    schemas = conn.run("SELECT nspname FROM pg_namespace")
    return Facts(
        role=str(name),
        superuser=bool(su),
        attributes={
            "superuser": bool(su),
            "createrole": bool(createrole),
            "createdb": bool(createdb),
            "replication": bool(replication),
            "bypassrls": bool(bypassrls),
        },
        platform="supabase" if supabase else "postgresql",
        reserved=parse_reserved(reserved_setting or "", memberships_setting or ""),
        cron_database=str(cron_db or ""),
        cron_installed=bool(cron_installed),
        cron_available=bool(cron_available),
        database=str(database),
        memberships=frozenset(str(r[0]) for r in member_of),
        schemas=frozenset(str(r[0]) for r in schemas),
    )


def read_shape(conn: pg8000.native.Connection, facts: Facts) -> dict[str, Any]:
    """The database's shape (see :func:`shape_sql`)."""
    conn.run("SET search_path = ''")  # names in definitions come out schema-qualified
    try:
        shape: dict[str, Any] = json.loads(
            conn.run(shape_sql(facts.cron_installed, facts.reserved.roles))[0][0]
        )
    finally:
        conn.run("RESET search_path")
    return shape
