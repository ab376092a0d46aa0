"""Demo data that looks like a cold-email SaaS, generated server-side.

Everything is made by ``INSERT … SELECT … FROM generate_series`` after a fixed ``setseed()``, so
loading is fast and a scale always gives the same data.  Text is a word salad drawn per row from
a vocabulary (with German, Japanese, Cyrillic, Greek and emoji words) plus hex identifiers, so a
dump compresses about as well as real text (3-4× with zstd), not like repeated padding.  The data
also holds what a backup round-trip must carry: bytea, NULLs, an enum, a generated column, a range,
a table without a primary key (with duplicate rows), a large object, a text value of a few MB,
sequences, a view, indexes and foreign keys.

``compare_databases`` and ``table_row_counts`` live in :mod:`coldcopy.localstack.dbcompare` and are
re-exported here.
"""

from __future__ import annotations

import contextlib

import pg8000.native

from coldcopy.errors import DatabaseError
from coldcopy.localstack.dbcompare import compare_databases, table_row_counts

__all__ = ["DEMO_TABLES", "compare_databases", "load_demo_data", "row_plan", "table_row_counts"]

DEMO_TABLES: tuple[str, ...] = (
    "public.workspaces",
    "public.users",
    "public.leads",
    "public.campaigns",
    "public.email_events",
    "public.attachments",
    "public.documents",
    "public.audit_log",
)

# table → (rows at scale 1.0, floor for tiny scales)
_BASE_ROWS = {
    "workspaces": (500, 5),
    "users": (5_000, 10),
    "leads": (250_000, 100),
    "campaigns": (6_000, 10),
    "email_events": (600_000, 200),
    "attachments": (3_000, 10),
    "documents": (400, 5),
    "audit_log": (100_000, 50),
}
LARGE_OBJECT_OID = 4_242_420  # fixed, so that two loads at the same scale compare equal
_LARGE_TEXT_WORDS = 300_000  # about 2.5 MB in one value
_LARGE_OBJECT_WORDS = 30_000  # about 200 KB of text, followed by 100 KB of random bytes

_COMMON = """the and to of a in for you your we our is on with that this it be at as are from can
will have just not but if or so all about more what when how new time team next week quick question"""
_BUSINESS = """pipeline revenue outreach sequence follow-up meeting calendar demo quarter budget growth
leads conversion deliverability inbox warmup domain bounce reply open rate campaign prospect
onboarding integration workflow dashboard analytics forecast churn retention customers platform
pricing contract renewal proposal decision stakeholders roadmap priorities launch feedback call
schedule availability introduction referral partnership webinar trial upgrade invoice billing
security compliance GDPR SOC2 audit export import CSV API webhook sync CRM Salesforce HubSpot
Pipedrive Zapier Slack template personalization variables subject line cadence step delay
unsubscribe spam filter reputation SPF DKIM DMARC tracking pixel click link landing page signup
enterprise startup agency founder CEO CTO VP director manager head of sales marketing ops
engineering recruiting hiring talent candidates position role interview offer benefits remote
office Berlin London Tokyo Paris Austin Toronto Sydney Singapore Amsterdam Madrid Warsaw Lisbon
thanks regards cheers best hello hi hey dear team, today. tomorrow. Monday Tuesday Wednesday
Thursday Friday minutes hour worth exploring happy share case study results increase decrease
percent ROI value savings efficiency scale automate manual process spreadsheet tool stack switch
competitor alternative migration setup support ticket response SLA uptime latency performance
report metrics KPI goal target quota pipeline, deal, closed won lost stage qualified MQL SQL
opportunity account contact list segment persona ICP industry SaaS fintech healthtech logistics
retail ecommerce manufacturing education nonprofit government legal insurance real estate media"""
_INTERNATIONAL = """Grüße Viele Sehr geehrte Damen und Herren für Ihre Rückmeldung Müller Straße
Zürich München Köln Düsseldorf Größe café déjà vu naïve résumé São Paulo señor mañana año Kraków
Łódź Gdańsk Ελληνικά ευχαριστώ Привет спасибо Москва 日本語 東京 大阪 ありがとうございます
よろしくお願いします 中文 谢谢 北京 한국어 감사합니다 서울 مرحبا شكرا שלום תודה 🚀 ✅ 👋 🙏 📈 🔥
💡 🎉 — € £ ½ №"""
_PREFIXES = "cloud data sales lead mail flow sync grid pulse nova hyper meta quant signal vector orbit"
_SUFFIXES = "ly io hub stack base forge works labs wise ify sense scale path loop desk bird point"
# Common words first: _word() draws low indexes more often, as real text uses "the" more than "DMARC".
VOCABULARY: tuple[str, ...] = tuple(
    dict.fromkeys(
        f"{_COMMON} {_BUSINESS} {_INTERNATIONAL}".split()
        + [p.capitalize() + s for p in _PREFIXES.split() for s in _SUFFIXES.split()]
    )
)
_GREETINGS = [
    "Hi {first},",
    "Hallo {first},",
    "Sehr geehrte Damen und Herren,",
    "{first}様、こんにちは。",
    "Hey {first} 👋",
]
_SIGNOFFS = [
    "Best,",
    "Viele Grüße",
    "よろしくお願いします。日本語でも対応可能です。",
    "Cheers 🚀",
    "Спасибо!",
]
_FIRST = [
    "Anna",
    "Jürgen",
    "Zoë",
    "José",
    "Łukasz",
    "Søren",
    "Aiko",
    "Hiroshi",
    "Ольга",
    "Νίκος",
    "Priya",
    "Chloé",
]
_LAST = [
    "Müller",
    "Schröder",
    "García",
    "Núñez",
    "Kowalski",
    "Øster",
    "Tanaka",
    "山田",
    "Иванова",
    "Patel",
    "O'Brien",
]


# -- SQL fragments -------------------------------------------------------------------------------


def _word() -> str:
    # vocab() returns name[]: fixed-width elements make subscripting O(1); text[] would scan.
    return f"(pg_temp.vocab())[1 + floor(power(random(), 1.6) * {len(VOCABULARY)})::int]::text"


def _words(low: int, high: int) -> str:
    """A salad of ``low``..``high`` words, drawn fresh for each row of a query over ``g``.

    ``0 * g`` ties the sub-select to the outer row; without it PostgreSQL would run it once
    and give every row the same text.
    """
    count = f"{low} + floor(random() * {high - low + 1})::int + 0 * g"
    return f"array_to_string(ARRAY(SELECT {_word()} FROM generate_series(1, {count})), ' ')"


def _hex(chunks: int) -> str:
    """``chunks`` × 32 random hex digits."""
    return f"(SELECT string_agg(md5(random()::text), '') FROM generate_series(1, {chunks} + 0 * g))"


def _pick(options: list[str]) -> str:
    items = ",".join(pg8000.native.literal(o) for o in options)
    return f"(ARRAY[{items}])[1 + floor(random() * {len(options)})::int]"


def _cycle(options: list[str]) -> str:
    """options[g % n] (so every option occurs), with ``{first}`` replaced by a first name."""
    items = ",".join(pg8000.native.literal(o) for o in options)
    return f"replace((ARRAY[{items}])[1 + g % {len(options)}], '{{first}}', {_pick(_FIRST)})"


def _when(days: int = 730) -> str:
    """A moment in the ``days`` before 2026-01-01 (a fixed date keeps the data deterministic)."""
    return f"(timestamptz '2026-01-01 00:00:00+00' - random() * interval '{days} days')"


_COUNTRY = _pick(["DE", "JP", "US", "BR", "FR", "GB", "PL", "KR"])
_LEGAL_FORM = _pick(["GmbH", "Inc.", "Ltd", "株式会社", "S.A.", "sp. z o.o.", "AG", "LLC"])
_TWO_WORDS = f"{_word()} || ' ' || {_word()}"

_SCHEMA = """
CREATE TYPE lead_status AS ENUM ('new', 'contacted', 'replied', 'interested', 'won', 'lost', 'blocked');
CREATE SEQUENCE invoice_number_seq START 1000;
CREATE TABLE workspaces (
    id integer GENERATED BY DEFAULT AS IDENTITY, public_id uuid NOT NULL, name text NOT NULL,
    slug text NOT NULL, plan text NOT NULL, country char(2) NOT NULL, created_at timestamptz NOT NULL,
    settings jsonb NOT NULL, api_key_hash text);
CREATE TABLE users (
    id integer GENERATED BY DEFAULT AS IDENTITY, workspace_id integer NOT NULL, email text NOT NULL,
    full_name text NOT NULL, locale text NOT NULL, is_admin boolean NOT NULL,
    created_at timestamptz NOT NULL, last_login_at timestamptz, signature text);
CREATE TABLE leads (
    id bigint GENERATED BY DEFAULT AS IDENTITY, workspace_id integer NOT NULL, email text NOT NULL,
    email_domain text GENERATED ALWAYS AS (split_part(email, '@', 2)) STORED,
    first_name text NOT NULL, last_name text NOT NULL, company text NOT NULL, job_title text,
    phone text, country char(2), status lead_status NOT NULL, score numeric(5,2),
    engagement double precision, tags text[], custom_fields jsonb, notes text,
    created_at timestamptz NOT NULL, updated_at timestamptz);
CREATE TABLE campaigns (
    id integer GENERATED BY DEFAULT AS IDENTITY, workspace_id integer NOT NULL, owner_user_id integer,
    name text NOT NULL, subject text NOT NULL, body text NOT NULL, status text NOT NULL,
    daily_limit integer NOT NULL, send_window tstzrange, scheduled_for date, created_at timestamptz NOT NULL);
CREATE TABLE email_events (
    id bigint GENERATED BY DEFAULT AS IDENTITY, campaign_id integer NOT NULL, lead_id bigint NOT NULL,
    event_type text NOT NULL, occurred_at timestamptz NOT NULL, payload jsonb NOT NULL, body text);
CREATE TABLE attachments (
    id integer GENERATED BY DEFAULT AS IDENTITY, campaign_id integer NOT NULL, filename text NOT NULL,
    content_type text NOT NULL, data bytea, uploaded_at timestamptz NOT NULL);
CREATE TABLE documents (
    id integer GENERATED BY DEFAULT AS IDENTITY, workspace_id integer NOT NULL, title text NOT NULL,
    body text NOT NULL, blob oid, updated_at timestamptz NOT NULL);
CREATE TABLE audit_log (
    occurred_at timestamptz NOT NULL, workspace_id integer, actor text, action text NOT NULL,
    ip inet, detail jsonb);
"""

# Keys, indexes and foreign keys come after the rows: building them once is faster than row by row.
_CONSTRAINTS = """
ALTER TABLE workspaces ADD PRIMARY KEY (id), ADD UNIQUE (slug);
ALTER TABLE users ADD PRIMARY KEY (id), ADD FOREIGN KEY (workspace_id) REFERENCES workspaces;
ALTER TABLE leads ADD PRIMARY KEY (id), ADD FOREIGN KEY (workspace_id) REFERENCES workspaces;
ALTER TABLE campaigns ADD PRIMARY KEY (id), ADD FOREIGN KEY (workspace_id) REFERENCES workspaces,
    ADD FOREIGN KEY (owner_user_id) REFERENCES users ON DELETE SET NULL;
ALTER TABLE email_events ADD PRIMARY KEY (id),
    ADD FOREIGN KEY (campaign_id) REFERENCES campaigns, ADD FOREIGN KEY (lead_id) REFERENCES leads;
ALTER TABLE attachments ADD PRIMARY KEY (id), ADD FOREIGN KEY (campaign_id) REFERENCES campaigns;
ALTER TABLE documents ADD PRIMARY KEY (id), ADD FOREIGN KEY (workspace_id) REFERENCES workspaces;
CREATE INDEX leads_workspace_email_idx ON leads (workspace_id, email);
CREATE INDEX email_events_lead_idx ON email_events (lead_id);
CREATE INDEX email_events_campaign_time_idx ON email_events (campaign_id, occurred_at);
CREATE INDEX audit_log_time_idx ON audit_log (occurred_at);
CREATE VIEW campaign_stats AS
    SELECT c.id AS campaign_id, c.name,
           count(e.id) FILTER (WHERE e.event_type = 'sent') AS sent,
           count(e.id) FILTER (WHERE e.event_type = 'opened') AS opened,
           count(e.id) FILTER (WHERE e.event_type = 'replied') AS replied
    FROM campaigns c LEFT JOIN email_events e ON e.campaign_id = c.id GROUP BY c.id, c.name;
"""


def _inserts(n: dict[str, int]) -> list[str]:
    ws, us, ld, cp = n["workspaces"], n["users"], n["leads"], n["campaigns"]
    duplicates = max(1, n["audit_log"] // 100)
    plan = _pick(["free", "starter", "growth", "enterprise"])
    timezone = _pick(["Europe/Berlin", "Asia/Tokyo", "America/New_York"])
    mail_domain = _pick(["gmail.com", "web.de", "yahoo.co.jp", "outlook.com", "acme.io", "example.com"])
    phone = "'+' || (10 + floor(random() * 89))::int || ' ' || floor(random() * 1e9)::bigint"
    tag = _pick(["hot", "cold", "vip", "q3", "webinar", "😀"])
    user_agent = _pick(
        ["Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5)", "Outlook-iOS/2.0", "Thunderbird/128.0"]
    )
    ip = "floor(random() * 256) || '.' || floor(random() * 256) || '.' || floor(random() * 256)"
    event_type = """CASE WHEN r < 0.40 THEN 'sent' WHEN r < 0.70 THEN 'delivered' WHEN r < 0.85 THEN 'opened'
                    WHEN r < 0.91 THEN 'clicked' WHEN r < 0.95 THEN 'replied' WHEN r < 0.98 THEN 'bounced'
                    ELSE 'unsubscribed' END"""
    action = _pick(
        ["login", "export_leads", "campaign.start", "campaign.pause", "api_key.rotate", "user.invite"]
    )
    return [
        f"""INSERT INTO workspaces (id, public_id, name, slug, plan, country, created_at, settings,
                                api_key_hash)
        SELECT g, md5('workspace' || g)::uuid, name,
               lower(regexp_replace(name, '[^A-Za-z0-9]+', '-', 'g')) || '-' || g,
               {plan}, {_COUNTRY}, {_when()},
               jsonb_build_object('timezone', {timezone},
                                  'send_window', jsonb_build_array(8 + g % 3, 17 + g % 4),
                                  'tracking_domain', 'trk' || g || '.example.com',
                                  'signature_html', '<p>' || {_words(5, 20)} || '</p>'),
               CASE WHEN g % 7 = 0 THEN NULL ELSE md5(random()::text) END
        FROM (SELECT g, {_TWO_WORDS} || ' ' || {_LEGAL_FORM} AS name FROM generate_series(1, {ws}) g) s""",
        f"""INSERT INTO users (id, workspace_id, email, full_name, locale, is_admin, created_at,
                           last_login_at, signature)
        SELECT g, 1 + g % {ws}, 'user' || g || '@' || md5(g::text) || '.example.org', full_name,
               (ARRAY['en-US', 'de-DE', 'ja-JP', 'pt-BR', 'ru-RU'])[1 + g % 5], g % 10 = 0, {_when()},
               CASE WHEN g % 5 = 1 THEN NULL ELSE {_when(30)} END,
               CASE WHEN g % 3 = 0 THEN NULL ELSE {_cycle(_SIGNOFFS)} || E'\\n' || full_name END
        FROM (SELECT g, {_pick(_FIRST)} || ' ' || {_pick(_LAST)} AS full_name
              FROM generate_series(1, {us}) g) s""",
        f"""INSERT INTO leads (id, workspace_id, email, first_name, last_name, company, job_title, phone,
                           country, status, score, engagement, tags, custom_fields, notes, created_at,
                           updated_at)
        SELECT g, 1 + floor(random() * {ws})::int, 'lead.' || g || '@' || {mail_domain},
               {_pick(_FIRST)}, {_pick(_LAST)}, {_TWO_WORDS} || ' ' || {_LEGAL_FORM},
               CASE WHEN r1 < 0.1 THEN NULL ELSE {_TWO_WORDS} END,
               CASE WHEN r2 < 0.4 THEN NULL ELSE {phone} END,
               CASE WHEN r2 > 0.95 THEN NULL ELSE {_COUNTRY} END,
               (enum_range(NULL::lead_status))[1 + floor(r1 * 7)::int], round((random() * 100)::numeric, 2),
               CASE WHEN r2 < 0.3 THEN NULL ELSE random() END,
               CASE WHEN r2 < 0.5 THEN NULL ELSE ARRAY[{tag}, {_word()}] END,
               jsonb_build_object('industry', {_word()}, 'employees', floor(power(random(), 3) * 50000)::int,
                                  'linkedin', 'https://www.linkedin.com/in/' || md5(g::text),
                                  'source', {_pick(["import", "api", "form", "zapier"])}),
               CASE WHEN r2 < 0.7 THEN NULL ELSE {_words(10, 60)} END,
               {_when()}, CASE WHEN r1 < 0.5 THEN NULL ELSE {_when(60)} END
        FROM (SELECT g, random() AS r1, random() AS r2 FROM generate_series(1, {ld}) g) s""",
        f"""INSERT INTO campaigns (id, workspace_id, owner_user_id, name, subject, body, status, daily_limit,
                               send_window, scheduled_for, created_at)
        SELECT g, 1 + g % {ws}, CASE WHEN g % 10 = 0 THEN NULL ELSE 1 + g % {us} END,
               {_words(2, 5)}, {_words(4, 10)} || ' ' || {_pick(["?", "!", "🚀", "—", "…"])},
               {_cycle(_GREETINGS)} || E'\\n\\n' || {_words(60, 220)} || E'\\n\\n' || {_cycle(_SIGNOFFS)},
               {_pick(["draft", "active", "paused", "finished"])}, 50 + floor(random() * 450)::int,
               tstzrange(created_at, created_at + interval '8 hours'),
               CASE WHEN g % 4 = 0 THEN NULL ELSE date '2026-01-01' + floor(random() * 90)::int END,
               created_at
        FROM (SELECT g, {_when()} AS created_at FROM generate_series(1, {cp}) g) s""",
        f"""INSERT INTO email_events (id, campaign_id, lead_id, event_type, occurred_at, payload, body)
        SELECT g, 1 + floor(random() * {cp})::int, 1 + floor(random() * {ld})::bigint, event_type,
               {_when(365)},
               jsonb_build_object(
                   'message_id', '<' || md5(random()::text) || '@mx.coldcopy.example>',
                   'smtp', jsonb_build_object('code', CASE event_type WHEN 'bounced' THEN 550 ELSE 250 END,
                                              'response', {_TWO_WORDS}),
                   'ip', '10.' || {ip}, 'user_agent', {user_agent},
                   'url', CASE WHEN event_type = 'clicked'
                               THEN 'https://' || md5(random()::text) || '.example.com/p?id=' || g END,
                   'attempt', 1 + floor(power(random(), 4) * 3)::int),
               CASE WHEN event_type = 'replied' THEN {_cycle(_GREETINGS)} || E'\\n' || {_words(15, 120)} END
        FROM (SELECT g, {event_type} AS event_type
              FROM (SELECT g, random() AS r FROM generate_series(1, {n["email_events"]}) g) r) s""",
        f"""INSERT INTO attachments (id, campaign_id, filename, content_type, data, uploaded_at)
        SELECT g, 1 + g % {cp}, {_word()} || {_pick([".pdf", ".png", ".csv", ".txt"])},
               {_pick(["application/pdf", "image/png", "text/csv", "text/plain"])},
               CASE WHEN g % 20 = 2 THEN NULL WHEN g % 20 = 1 THEN ''::bytea
                    ELSE convert_to({_words(20, 400)}, 'UTF8') || decode({_hex(60)}, 'hex') END,
               {_when()}
        FROM generate_series(1, {n["attachments"]}) g""",
        f"""INSERT INTO documents (id, workspace_id, title, body, updated_at)
        SELECT g, 1 + g % {ws}, {_words(3, 8)}, {_words(150, 800)}, {_when()}
        FROM generate_series(1, {n["documents"] - 2}) g""",
        # One text value of a few MB, and one large object referenced from the table.
        f"""INSERT INTO documents (id, workspace_id, title, body, updated_at)
        SELECT {n["documents"] - 1}, 1, 'Playbook (full export)',
               {_words(_LARGE_TEXT_WORDS, _LARGE_TEXT_WORDS)}, {_when()}
        FROM generate_series(1, 1) g""",
        f"""INSERT INTO documents (id, workspace_id, title, body, blob, updated_at)
        SELECT {n["documents"]}, 1, 'Lead list backup.bin', 'binary export, see blob',
               lo_from_bytea({LARGE_OBJECT_OID},
                             convert_to({_words(_LARGE_OBJECT_WORDS, _LARGE_OBJECT_WORDS)}, 'UTF8')
                             || decode({_hex(6400)}, 'hex')),
               {_when()}
        FROM generate_series(1, 1) g""",
        f"""INSERT INTO audit_log (occurred_at, workspace_id, actor, action, ip, detail)
        SELECT {_when(365)}, CASE WHEN g % 50 = 0 THEN NULL ELSE 1 + g % {ws} END,
               CASE WHEN random() < 0.15 THEN NULL ELSE 'user' || (1 + g % {us}) || '@example.org' END,
               {action}, ('192.0.2.' || floor(random() * 255))::inet,
               CASE WHEN random() < 0.3 THEN NULL ELSE jsonb_build_object('note', {_words(2, 12)}, 'n', g) END
        FROM generate_series(1, {n["audit_log"] - duplicates}) g""",
        # Exact duplicate rows: a table without a key can hold them, and a restore must keep them.
        f"""INSERT INTO audit_log
        SELECT * FROM audit_log ORDER BY occurred_at, action, actor, workspace_id LIMIT {duplicates}""",
    ]


def row_plan(scale: float) -> dict[str, int]:
    """How many rows each demo table gets at ``scale`` (linear, with a small floor)."""
    if scale <= 0:
        raise ValueError("scale must be positive")
    return {table: max(floor, round(base * scale)) for table, (base, floor) in _BASE_ROWS.items()}


def load_demo_data(conn: pg8000.native.Connection, scale: float = 1.0) -> dict[str, int]:
    """Create and fill the demo tables in the empty database of ``conn``; return table → row count.

    One transaction, so a failed load leaves nothing behind.  The keys are the schema-qualified
    names of :data:`DEMO_TABLES`, as :func:`table_row_counts` gives them.  Scale 1.0 is about
    960,000 rows, 410 MB on disk and a 320 MB plain dump; 0.01 loads in about half a second.
    """
    n = row_plan(scale)
    if conn.run("SELECT to_regclass('public.workspaces') IS NOT NULL")[0][0]:
        raise DatabaseError(
            "the database already holds demo tables", "load the demo data into a new, empty database"
        )
    vocabulary = ",".join(pg8000.native.literal(word) for word in VOCABULARY)
    conn.run("BEGIN")
    try:
        conn.run("SET LOCAL jit = off")  # compiling these wide expressions costs more than it saves
        conn.run("SELECT setseed(0.42)")
        conn.run(
            "CREATE FUNCTION pg_temp.vocab() RETURNS name[] IMMUTABLE LANGUAGE sql"
            f" AS $$ SELECT ARRAY[{vocabulary}]::name[] $$"
        )
        conn.run(_SCHEMA)
        for statement in _inserts(n):
            conn.run(statement)
        for table in (
            "workspaces",
            "users",
            "leads",
            "campaigns",
            "email_events",
            "attachments",
            "documents",
        ):
            conn.run(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
        conn.run(f"SELECT setval('invoice_number_seq', {1000 + 3 * n['workspaces']})")
        conn.run(_CONSTRAINTS)
        conn.run("ANALYZE " + ", ".join(DEMO_TABLES))
        conn.run("COMMIT")
    except BaseException:
        with contextlib.suppress(Exception):  # the connection may be what failed
            conn.run("ROLLBACK")
        raise
    counts = table_row_counts(conn)
    return {table: counts[table] for table in DEMO_TABLES}
