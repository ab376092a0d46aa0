"""Settings: every environment variable ColdCopy reads, parsed once into one ``Settings`` object.

The variable names are the ones our users already have (DB_*, DO_SPACES_*, BACKUP_ENCRYPTION_KEY,
SMTP_*, ALERT_*, COLDCOPY_*).  Values come from the process environment over an optional ``.env``
file (``--env-file``, else ``COLDCOPY_ENV_FILE``, else ``./.env``).  Validation collects every
problem — a missing value, a malformed number, a bad cron line, an SMTP port, an alert threshold,
a retention tier — and raises one ConfigError (exit code 2) before anything connects.  Nothing
else in ColdCopy reads the environment for settings.  Secrets are held in ``Secret`` so they never
show up in a repr, a log line or a traceback.
"""

from __future__ import annotations

import io
import os
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from coldcopy.core.retention import RetentionPolicy
from coldcopy.core.sanity import parse_sanity_queries
from coldcopy.core.thresholds import Thresholds
from coldcopy.errors import ConfigError


class Secret:
    """A string that does not print itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("secret", self._value))


SECRET_VARS = (
    "DB_PASSWORD",
    "DO_SPACES_SECRET",
    "BACKUP_ENCRYPTION_KEY",
    "BACKUP_ENCRYPTION_KEY_PREVIOUS",
    "BACKUP_ENCRYPTION_KEY_NEW",
    "MONITOR_TOKEN",
    "DO_API_TOKEN",
    "SMTP_PASSWORD",
    "VERIFY_DB_PASSWORD",
    "SUPABASE_STORAGE_SECRET",
)

SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
#: The modes in which libpq refuses to connect without a root certificate.
SSL_MODES_NEEDING_ROOT = ("verify-ca", "verify-full")
#: Where hosted Supabase users get their project's CA (said wherever a root certificate is missing).
SUPABASE_CA_HINT = (
    "hosted Supabase: Project Settings → Database → SSL Configuration → Download certificate "
    "(prod-ca-2021.crt)"
)


@dataclass(frozen=True)
class RootCert:
    """The CA certificate(s) a database server's certificate must be signed by (``DB_SSLROOTCERT``).

    Given as a file's path, or as the PEM text itself (functions and App Platform jobs have no file
    to mount one from).  ``pem`` is the certificates, normalised; ``path`` the file they were read
    from (empty: given as a value).
    """

    pem: str = field(repr=False)  # public, but long: a repr names the file, or says it was a value
    path: str = ""


@dataclass(frozen=True)
class SmtpConfig:
    """Alert emails (``SMTP_*``, ``ALERT_EMAIL``); off until a host and a recipient are set."""

    host: str = ""
    port: int = 587
    user: str = ""
    password: Secret = field(default_factory=lambda: Secret(""))
    sender: str = ""
    recipients: tuple[str, ...] = ()
    security: str = "starttls"  # "starttls" | "tls" | "none"
    ca_file: str = ""
    timeout: float = 20.0

    @property
    def configured(self) -> bool:
        return bool(self.host and self.recipients)


@dataclass(frozen=True)
class Settings:
    # PostgreSQL
    db_host: str = ""
    db_port: int = 5432
    db_name: str = ""
    db_user: str = ""
    db_password: Secret = field(default_factory=lambda: Secret(""))
    db_sslmode: str = "prefer"
    db_sslrootcert: RootCert | None = None
    pg_bin_dir: str = ""
    server_command: str = ""  # how the PostgreSQL server's OS user runs coldcopy (restore_command)
    # Spaces
    spaces_key: str = ""
    spaces_secret: Secret = field(default_factory=lambda: Secret(""))
    spaces_bucket: str = ""
    spaces_region: str = "nyc3"
    spaces_endpoint: str = "https://nyc3.digitaloceanspaces.com"
    cluster: str = ""
    # The project's Storage (Supabase Storage's S3 endpoint): files snapshots; off while unset
    files_endpoint: str = ""
    files_region: str = ""
    files_key: str = ""
    files_secret: Secret = field(default_factory=lambda: Secret(""))
    # Encryption and the stream pipeline
    encryption_key: Secret = field(default_factory=lambda: Secret(""))
    # Keys that still open what they wrote (a rotation in progress): passphrases separated by ","
    encryption_key_previous: Secret = field(default_factory=lambda: Secret(""))
    encryption_key_new: Secret = field(default_factory=lambda: Secret(""))  # `key rotate`'s target
    zstd_level: int = 1
    volume_size_mb: int = 8
    upload_concurrency: int = 4
    storage_timeout_seconds: int = 120  # a storage reply that stalls this long is retried
    stale_upload_seconds: int = 900
    row_counts: str = "exact"
    pause_at: str = ""  # fault tests only: "<point>@<file>" (coldcopy.pausepoints)
    # Retention (applied by `coldcopy cleanup`): days per kind, tiers, the bucket lifecycle rule
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    # Monitor: the API's token, the alert rules' thresholds, alert emails, metric names
    monitor_token: Secret = field(default_factory=lambda: Secret(""))
    thresholds: Thresholds = field(default_factory=Thresholds)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    metrics_legacy_gb: bool = False
    # Jobs: the scheduler tick's cron table (UTC) and how the runner is woken
    schedule_full: str = "0 2 * * *"
    schedule_verify: str = "0 3 * * 0"
    schedule_cleanup: str = "0 4 * * *"
    schedule_compliance: str = "0 1 1 * *"
    schedule_wal_sweep: str = ""  # empty: off (servers with archive_command need no sweep)
    changes_interval_seconds: int = 15  # the change drain's pause between drains within one run
    changes_batch_rows: int = 100_000  # decoded rows per stored batch (more for a bigger transaction)
    schedule_grace_minutes: int = 60
    job_history_days: int = 90  # finished runs, claims and schedule slots older than this are pruned
    launcher: str = "local"
    do_api_token: Secret = field(default_factory=lambda: Secret(""))
    do_api_url: str = "https://api.digitalocean.com"
    runner_app_id: str = ""
    runner_image: str = "coldcopy-runner:latest"
    # Test restores (`verify --level full|restore`): the scratch server (no host: a local cluster)
    verify_db_host: str = ""
    verify_db_port: int = 5432
    verify_db_user: str = ""
    verify_db_password: Secret = field(default_factory=lambda: Secret(""))
    verify_db_sslmode: str = "prefer"
    verify_db_sslrootcert: RootCert | None = None
    verify_sanity_queries: str = ""  # validated by core.sanity.parse_sanity_queries
    verify_sample_older: int = 2
    verify_statement_timeout_seconds: int = 60
    # GDPR erasures: the JSON file declaring per kind of subject what erasing means (docs/erasures.md)
    gdpr_erasure_config: str = ""
    # The variables these settings were read from, for a runner that inherits nothing (docker)
    variables: tuple[tuple[str, Secret], ...] = field(default=(), compare=False, repr=False)

    @property
    def prefix(self) -> str:
        """Key prefix of this protected database inside the bucket: ``coldcopy/<cluster>/``."""
        return f"coldcopy/{self.cluster_label}/"

    @property
    def cluster_label(self) -> str:
        """How messages name this protected database (alert emails, runbooks)."""
        return self.cluster or self.db_name or "default"

    @property
    def files_configured(self) -> bool:
        """Whether files snapshots are on: the project's Storage endpoint and keys are all set."""
        return bool(self.files_endpoint and self.files_key and self.files_secret)

    @property
    def encrypted(self) -> bool:
        return bool(self.encryption_key)

    @property
    def previous_passphrases(self) -> tuple[Secret, ...]:
        """BACKUP_ENCRYPTION_KEY_PREVIOUS split at commas (blank parts ignored)."""
        parts = self.encryption_key_previous.reveal().split(",")
        return tuple(Secret(p.strip()) for p in parts if p.strip())

    def runner_env(self) -> dict[str, str]:
        """The variables these settings came from, as given, but the tokens a job never uses
        (``RUNNER_WITHHELD``): for a runner container that inherits nothing."""
        return {name: value.reveal() for name, value in self.variables if name not in RUNNER_WITHHELD}

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.repr)
        return f"Settings({shown})"


# What each command group needs; validation only reports what the running command uses.
DB = "db"
STORAGE = "storage"
FILES = "files"

_Conv = Callable[[str], Any]


class Refused(ValueError):
    """A value a converter refuses, with how much of it the message may show (None: none of it)."""

    def __init__(self, message: str, shown: int | None = 60) -> None:
        super().__init__(message)
        self.shown = shown


def _int(lo: int, hi: int) -> _Conv:
    def conv(text: str) -> int:
        value = int(text)
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return value

    return conv


def _whole(lo: int, hi: int) -> _Conv:
    def conv(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = lo - 1
        if not lo <= value <= hi:
            raise Refused(f"must be a whole number between {lo} and {hi}", shown=40)
        return value

    return conv


def _at_least(lowest: float, integer: bool = False) -> _Conv:
    def conv(text: str) -> float:
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            value = lowest - 1
        if value < lowest:
            raise Refused(f"must be a number of at least {lowest:g}", shown=40)
        return value

    return conv


def _choice(*allowed: str) -> _Conv:
    def conv(text: str) -> str:
        if text not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return text

    return conv


def _flag(text: str) -> bool:
    return text.lower() in ("1", "true", "yes")


def _endpoint(text: str) -> str:
    url = urlparse(text)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise ValueError("must be a URL such as https://nyc3.digitaloceanspaces.com or http://127.0.0.1:9000")
    return text.rstrip("/")


def _cron(text: str) -> str:
    # Imported here: croniter costs ~70 ms, and the web functions load settings on every cold start
    # without ever needing it (their environment holds no schedule).
    from croniter import croniter

    if text.strip().lower() == "off":
        return "off"  # the job kind is not scheduled (it still runs when asked)
    if len(text.split()) != 5 or not croniter.is_valid(text):
        raise ValueError("must be a 5-field cron expression such as '0 2 * * *' (UTC), or off")
    return text


def _bucket(text: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", text):
        raise ValueError("must be 3-63 lowercase letters, digits, '.' or '-'")
    return text


def _cluster(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", text) or ".." in text:
        raise ValueError("must be letters, digits, '_', '.' or '-' (no '/')")
    return text


def _sanity(text: str) -> str:
    parse_sanity_queries(text)  # raises ValueError naming the refused query
    return text.strip()


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 0 < value < 65536:
        raise Refused("must be a port number", shown=20)
    return value


def _security(text: str) -> str:
    if text.lower() not in ("starttls", "tls", "none"):
        raise Refused("must be starttls, tls or none", shown=None)
    return text.lower()


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise Refused("must be a number of seconds", shown=None) from None


_PEM_BLOCK = re.compile(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.S)


def normalise_pem(text: str) -> str:
    """The certificates in ``text``, each re-wrapped as PEM; a value pasted into an environment
    variable may have lost its line breaks, or carry them as the two characters ``\\n``."""
    blocks = []
    for body in _PEM_BLOCK.findall(text):
        flat = re.sub(r"\\n|\s", "", body)
        lines = [flat[i : i + 64] for i in range(0, len(flat), 64)]
        blocks.append("\n".join(["-----BEGIN CERTIFICATE-----", *lines, "-----END CERTIFICATE-----"]))
    return "\n".join(blocks) + "\n" if blocks else ""


def _rootcert(text: str) -> RootCert:
    if "-----BEGIN" in text:
        path, content = "", text
    else:
        path = str(Path(text).expanduser())
        try:
            content = Path(path).read_text(errors="replace")
        except OSError as exc:
            raise Refused(
                f"is neither PEM text (-----BEGIN CERTIFICATE-----…) nor a file that can be read "
                f"({exc.strerror or exc})",
                shown=200,
            ) from None
    pem = normalise_pem(content)
    try:
        if not pem:
            raise ssl.SSLError("no certificate")
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=pem)
    except ssl.SSLError:
        where = f"the file {path}" if path else "the value"
        raise Refused(
            f"must be a CA certificate in PEM form (-----BEGIN CERTIFICATE-----…), but {where} holds none",
            shown=None,
        ) from None
    return RootCert(pem, path)


def _recipients(text: str) -> tuple[str, ...]:
    found = tuple(r.strip() for r in text.split(",") if r.strip())
    bad = [r for r in found if "@" not in r or any(c in r for c in "\r\n<>")]
    if bad:
        raise Refused(f"has addresses that are not email addresses: {', '.join(bad)[:100]}", shown=None)
    return found


# env var -> (where it goes: a Settings field or "<part>.<field>", converter, required-by group or None)
_SPEC: dict[str, tuple[str, _Conv, str | None]] = {
    "DB_HOST": ("db_host", str, DB),
    "DB_PORT": ("db_port", _int(1, 65535), None),
    "DB_NAME": ("db_name", str, DB),
    "DB_USER": ("db_user", str, DB),
    "DB_PASSWORD": ("db_password", Secret, None),
    "DB_SSLMODE": ("db_sslmode", _choice(*SSL_MODES), None),
    "DB_SSLROOTCERT": ("db_sslrootcert", _rootcert, None),
    "PG_BIN_DIR": ("pg_bin_dir", str, None),
    "COLDCOPY_SERVER_COMMAND": ("server_command", str, None),
    "DO_SPACES_KEY": ("spaces_key", str, STORAGE),
    "DO_SPACES_SECRET": ("spaces_secret", Secret, STORAGE),
    "DO_SPACES_BUCKET": ("spaces_bucket", _bucket, STORAGE),
    "DO_SPACES_REGION": ("spaces_region", str, None),
    "DO_SPACES_ENDPOINT": ("spaces_endpoint", _endpoint, None),
    "COLDCOPY_CLUSTER": ("cluster", _cluster, None),
    "SUPABASE_STORAGE_ENDPOINT": ("files_endpoint", _endpoint, FILES),
    "SUPABASE_STORAGE_REGION": ("files_region", str, None),
    "SUPABASE_STORAGE_KEY": ("files_key", str, FILES),
    "SUPABASE_STORAGE_SECRET": ("files_secret", Secret, FILES),
    "BACKUP_ENCRYPTION_KEY": ("encryption_key", Secret, None),
    "BACKUP_ENCRYPTION_KEY_PREVIOUS": ("encryption_key_previous", Secret, None),
    "BACKUP_ENCRYPTION_KEY_NEW": ("encryption_key_new", Secret, None),
    "COLDCOPY_ZSTD_LEVEL": ("zstd_level", _int(1, 19), None),
    "COLDCOPY_VOLUME_SIZE_MB": ("volume_size_mb", _int(1, 512), None),
    "COLDCOPY_UPLOAD_CONCURRENCY": ("upload_concurrency", _int(1, 32), None),
    "COLDCOPY_STORAGE_TIMEOUT_SECONDS": ("storage_timeout_seconds", _int(1, 3600), None),
    "COLDCOPY_STALE_UPLOAD_SECONDS": ("stale_upload_seconds", _int(300, 7 * 86400), None),
    "COLDCOPY_ROW_COUNTS": ("row_counts", _choice("exact", "estimate"), None),
    "COLDCOPY_PAUSE_AT": ("pause_at", str, None),
    "FULL_RETENTION_DAYS": ("retention.full_days", _int(1, 36500), None),
    "COMPLIANCE_RETENTION_DAYS": ("retention.compliance_days", _int(1, 36500), None),
    "WAL_RETENTION_DAYS": ("retention.wal_days", _int(1, 36500), None),
    "MONITOR_TOKEN": ("monitor_token", Secret, None),
    "COLDCOPY_SCHEDULE_FULL": ("schedule_full", _cron, None),
    "COLDCOPY_SCHEDULE_VERIFY": ("schedule_verify", _cron, None),
    "COLDCOPY_SCHEDULE_CLEANUP": ("schedule_cleanup", _cron, None),
    "COLDCOPY_SCHEDULE_COMPLIANCE": ("schedule_compliance", _cron, None),
    "COLDCOPY_SCHEDULE_WAL_SWEEP": ("schedule_wal_sweep", _cron, None),
    "COLDCOPY_CHANGES_INTERVAL_SECONDS": ("changes_interval_seconds", _int(1, 300), None),
    "COLDCOPY_CHANGES_BATCH_ROWS": ("changes_batch_rows", _int(1000, 10_000_000), None),
    "COLDCOPY_SCHEDULE_GRACE_MINUTES": ("schedule_grace_minutes", _int(5, 7 * 1440), None),
    "COLDCOPY_HEARTBEAT_STALE_SECONDS": ("thresholds.heartbeat_stale_seconds", _int(30, 86400), None),
    # At least 8 days: longer than the longest grace window, so a pruned slot can never be due again.
    "COLDCOPY_JOB_HISTORY_DAYS": ("job_history_days", _int(8, 36500), None),
    "COLDCOPY_LAUNCHER": ("launcher", _choice("local", "docker", "app-platform", "none"), None),
    "DO_API_TOKEN": ("do_api_token", Secret, None),
    "DO_API_URL": ("do_api_url", _endpoint, None),
    "RUNNER_APP_ID": ("runner_app_id", str, None),
    "RUNNER_IMAGE": ("runner_image", str, None),
    "VERIFY_DB_HOST": ("verify_db_host", str, None),
    "VERIFY_DB_PORT": ("verify_db_port", _int(1, 65535), None),
    "VERIFY_DB_USER": ("verify_db_user", str, None),
    "VERIFY_DB_PASSWORD": ("verify_db_password", Secret, None),
    "VERIFY_DB_SSLMODE": ("verify_db_sslmode", _choice(*SSL_MODES), None),
    "VERIFY_DB_SSLROOTCERT": ("verify_db_sslrootcert", _rootcert, None),
    "VERIFY_SANITY_QUERIES": ("verify_sanity_queries", _sanity, None),
    "VERIFY_SAMPLE_OLDER": ("verify_sample_older", _int(0, 1000), None),
    "VERIFY_STATEMENT_TIMEOUT_SECONDS": ("verify_statement_timeout_seconds", _int(1, 86400), None),
    "GDPR_ERASURE_CONFIG": ("gdpr_erasure_config", str, None),
    # Features that parse their own part of the settings, checked with the rest (as before).
    "COLDCOPY_METRICS_LEGACY_GB": ("metrics_legacy_gb", _flag, None),
    "ALERT_BACKUP_MAX_AGE_HOURS": ("thresholds.backup_max_age_hours", _at_least(1), None),
    "ALERT_VERIFY_MAX_AGE_DAYS": ("thresholds.verify_max_age_days", _at_least(1), None),
    "ALERT_WAL_MAX_AGE_MINUTES": ("thresholds.wal_max_age_minutes", _at_least(1), None),
    "ALERT_MIN_RECOVERY_WINDOW_HOURS": ("thresholds.min_recovery_window_hours", _at_least(0), None),
    "ALERT_SIZE_LOW_RATIO": ("thresholds.size_low_ratio", _at_least(0), None),
    "ALERT_SIZE_HIGH_RATIO": ("thresholds.size_high_ratio", _at_least(1), None),
    "ALERT_SIZE_SAMPLE": ("thresholds.size_sample", _at_least(2, integer=True), None),
    "ALERT_CHANGES_MAX_AGE_MINUTES": ("thresholds.changes_max_age_minutes", _at_least(1), None),
    "ALERT_CHANGES_SLOT_LAG_RATIO": ("thresholds.changes_slot_lag_ratio", _at_least(0), None),
    "ALERT_FILES_MAX_LAG_HOURS": ("thresholds.files_max_lag_hours", _at_least(0), None),
    "SMTP_HOST": ("smtp.host", str, None),
    "SMTP_PORT": ("smtp.port", _port, None),
    "SMTP_SECURITY": ("smtp.security", _security, None),
    "SMTP_TIMEOUT_SECONDS": ("smtp.timeout", _seconds, None),
    "ALERT_EMAIL": ("smtp.recipients", _recipients, None),
    "SMTP_USER": ("smtp.user", str, None),
    "SMTP_PASSWORD": ("smtp.password", Secret, None),
    "SMTP_FROM": ("smtp.sender", str, None),
    "SMTP_CA_FILE": ("smtp.ca_file", str, None),
    "COLDCOPY_KEEP_DAILY": ("retention.keep_daily", _whole(0, 100000), None),
    "COLDCOPY_KEEP_WEEKLY": ("retention.keep_weekly", _whole(0, 100000), None),
    "COLDCOPY_KEEP_MONTHLY": ("retention.keep_monthly", _whole(0, 100000), None),
    "COLDCOPY_KEEP_YEARLY": ("retention.keep_yearly", _whole(0, 100000), None),
    "COLDCOPY_LIFECYCLE_ABORT_DAYS": ("retention.abort_upload_days", _whole(1, 365), None),
}
#: The parts of Settings that are objects of their own, by the prefix of their spec entries.
_PARTS: dict[str, Callable[..., Any]] = {
    "retention": RetentionPolicy,
    "thresholds": Thresholds,
    "smtp": SmtpConfig,
}
ENV_FILE_VAR = "COLDCOPY_ENV_FILE"
UNSTRIPPED = ("SMTP_PASSWORD",)  # used as given: a password may begin or end with a space
#: What a runner that inherits nothing (the docker launcher) is not handed: the API tokens of the
#: monitor and of the launcher (a job uses every other setting).
RUNNER_WITHHELD = ("MONITOR_TOKEN", "DO_API_TOKEN")


_ENV_LINE_NAME = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*=")


def read_env_file(path: Path) -> dict[str, str]:
    """The variables of a .env file; ConfigError naming the file and line of every line that cannot
    be parsed (an unclosed quote would otherwise be dropped, and its variable left at its default)."""
    # Imported here: python-dotenv costs ~70 ms, and most deployments have no .env file to read.
    from dotenv import dotenv_values
    from dotenv.parser import parse_stream

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"the settings file {path} cannot be read: {type(exc).__name__}"]) from None
    bad = []
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            # The variable's name, never the line: its value may be a secret.
            named = _ENV_LINE_NAME.match(binding.original.string)
            what = f" ({named.group(1)}=…)" if named else ""
            bad.append(f"{path}, line {binding.original.line}{what}: cannot be parsed (an unclosed quote?)")
    if bad:
        raise ConfigError(bad)
    return {k: v for k, v in dotenv_values(stream=io.StringIO(text)).items() if v is not None}


def environment(env: Mapping[str, str] | None = None, env_file: Path | None = None) -> dict[str, str]:
    """The process environment over the .env file (the environment wins, as with doctl).

    ``./.env`` may be absent; a file named by ``env_file`` (``--env-file``) or COLDCOPY_ENV_FILE must
    exist (ConfigError otherwise), and so must every line of the file parse."""
    base = dict(os.environ if env is None else env)
    named = env_file or (Path(base[ENV_FILE_VAR]) if base.get(ENV_FILE_VAR, "").strip() else None)
    path = named or Path(".env")
    if named is not None and not named.exists():
        source = "--env-file" if env_file is not None else ENV_FILE_VAR
        raise ConfigError([f"the settings file {named} ({source}) does not exist"])
    merged = read_env_file(path) if path.is_file() else {}
    merged.update(base)
    return merged


def _smtp_defaults(smtp: SmtpConfig, given: Mapping[str, Any]) -> SmtpConfig:
    """Defaults that depend on other values: TLS on port 465, the sender from the user name."""
    security = smtp.security if "security" in given else ("tls" if smtp.port == 465 else "starttls")
    sender = smtp.sender or (smtp.user if "@" in smtp.user else "coldcopy@localhost")
    return replace(smtp, security=security, sender=sender)


def read_settings(
    env: Mapping[str, str] | None = None, *, need: tuple[str, ...] = (), env_file: Path | None = None
) -> tuple[Settings, list[str]]:
    """Settings and every problem found; a malformed value is left at its default.

    For callers that must still answer something when the settings are not usable (the web
    functions answer 503 and name the variables); everything else calls :func:`load_settings`.
    """
    try:
        values = environment(env, env_file)
        problems: list[str] = []
    except ConfigError as exc:  # the file: reported with the rest, the environment still read
        values, problems = dict(os.environ if env is None else env), list(exc.problems)
    kwargs: dict[str, Any] = {}
    parts: dict[str, dict[str, Any]] = {name: {} for name in _PARTS}
    seen: list[tuple[str, Secret]] = []
    for var, (name, conv, group) in _SPEC.items():
        given = values.get(var, "")
        raw = given if var in UNSTRIPPED else given.strip()
        if not raw.strip():
            if group in need:
                problems.append(f"{var} is not set")
            continue
        seen.append((var, Secret(given)))
        try:
            value = conv(raw)
        except ValueError as exc:
            length = exc.shown if isinstance(exc, Refused) else 60
            # Never echo a secret's value back.
            shown = "" if var in SECRET_VARS or length is None else f" (got {raw[:length]!r})"
            problems.append(f"{var} {exc}{shown}")
            continue
        part, _, attr = name.rpartition(".")
        (parts[part] if part else kwargs)[attr] = value
    problems += _root_needed(kwargs, values)
    for part, make in _PARTS.items():
        kwargs[part] = make(**parts[part])
    kwargs["smtp"] = _smtp_defaults(kwargs["smtp"], parts["smtp"])
    return Settings(**kwargs, variables=tuple(seen)), problems


def _root_needed(kwargs: Mapping[str, Any], values: Mapping[str, str]) -> list[str]:
    """verify-ca and verify-full without a root certificate: libpq refuses, so we do, up front."""
    found = []
    for prefix in ("DB_", "VERIFY_DB_"):
        mode = kwargs.get(f"{prefix.lower()}sslmode", "")
        given = values.get(f"{prefix}SSLROOTCERT", "").strip()
        if mode in SSL_MODES_NEEDING_ROOT and not given:
            found.append(
                f"{prefix}SSLMODE={mode} needs {prefix}SSLROOTCERT: the CA certificate that signed the "
                f"server's, as a file's path or as its PEM text ({SUPABASE_CA_HINT})"
            )
    return found


def load_settings(
    env: Mapping[str, str] | None = None, *, need: tuple[str, ...] = (), env_file: Path | None = None
) -> Settings:
    """Build Settings; every missing or malformed value is reported at once (ConfigError, exit 2)."""
    settings, problems = read_settings(env, need=need, env_file=env_file)
    if problems:
        raise ConfigError(problems)
    return settings


def missing(settings: Settings, group: str) -> list[str]:
    """The variables of ``group`` that ``settings`` lacks."""
    return [var for var, (name, _, g) in _SPEC.items() if g == group and not getattr(settings, name)]


def redact(text: str, settings: Settings | None) -> str:
    """Remove every configured secret from a string (for logs and error messages from subprocesses)."""
    if settings is None:
        return text
    for secret in _secrets(settings):
        if len(secret) >= 3:
            text = text.replace(secret, "***")
    return text


def _secrets(settings: Settings) -> list[str]:
    found = [getattr(settings, f.name) for f in fields(settings)] + [settings.smtp.password]
    return [s.reveal() for s in found if isinstance(s, Secret)]
