"""Settings from environment variables and an optional ``.env`` file.

The variable names are the ones our users already have (DB_*, DO_SPACES_*, BACKUP_ENCRYPTION_KEY).
Validation collects every problem and raises one ConfigError (exit code 2) before anything
connects.  Secrets are held in ``Secret`` so they never show up in a repr, a log line or a traceback.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

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
    "MONITOR_TOKEN",
    "DO_API_TOKEN",
    "SMTP_PASSWORD",
    "VERIFY_DB_PASSWORD",
)

SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


@dataclass(frozen=True)
class Settings:
    # PostgreSQL
    db_host: str = ""
    db_port: int = 5432
    db_name: str = ""
    db_user: str = ""
    db_password: Secret = field(default_factory=lambda: Secret(""))
    db_sslmode: str = "prefer"
    pg_bin_dir: str = ""
    server_command: str = ""  # how the PostgreSQL server's OS user runs coldcopy (restore_command)
    # Spaces
    spaces_key: str = ""
    spaces_secret: Secret = field(default_factory=lambda: Secret(""))
    spaces_bucket: str = ""
    spaces_region: str = "nyc3"
    spaces_endpoint: str = "https://nyc3.digitaloceanspaces.com"
    cluster: str = ""
    # Encryption and the stream pipeline
    encryption_key: Secret = field(default_factory=lambda: Secret(""))
    zstd_level: int = 1
    volume_size_mb: int = 8
    upload_concurrency: int = 4
    stale_upload_seconds: int = 900
    row_counts: str = "exact"
    # Retention (applied by `coldcopy cleanup`)
    full_retention_days: int = 30
    compliance_retention_days: int = 365
    wal_retention_days: int = 30
    # Monitor
    monitor_token: Secret = field(default_factory=lambda: Secret(""))
    # Jobs: the scheduler tick's cron table (UTC) and how the runner is woken
    schedule_full: str = "0 2 * * *"
    schedule_verify: str = "0 3 * * 0"
    schedule_cleanup: str = "0 4 * * *"
    schedule_compliance: str = "0 1 1 * *"
    schedule_wal_sweep: str = ""  # empty: off (servers with archive_command need no sweep)
    schedule_grace_minutes: int = 60
    heartbeat_stale_seconds: int = 600
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
    verify_sanity_queries: str = ""  # validated by sanity.parse_sanity_queries
    verify_sample_older: int = 2
    verify_statement_timeout_seconds: int = 60

    @property
    def prefix(self) -> str:
        """Key prefix of this protected database inside the bucket: ``coldcopy/<cluster>/``."""
        return f"coldcopy/{self.cluster or self.db_name or 'default'}/"

    @property
    def encrypted(self) -> bool:
        return bool(self.encryption_key)

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self))
        return f"Settings({shown})"


# What each command group needs; validation only reports what the running command uses.
DB = "db"
STORAGE = "storage"

_Conv = Callable[[str], Any]


def _int(lo: int, hi: int) -> _Conv:
    def conv(text: str) -> int:
        value = int(text)
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return value

    return conv


def _choice(*allowed: str) -> _Conv:
    def conv(text: str) -> str:
        if text not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return text

    return conv


def _endpoint(text: str) -> str:
    url = urlparse(text)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise ValueError("must be a URL such as https://nyc3.digitaloceanspaces.com or http://127.0.0.1:9000")
    return text.rstrip("/")


def _cron(text: str) -> str:
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
    from coldcopy.core.sanity import parse_sanity_queries

    parse_sanity_queries(text)  # raises ValueError naming the refused query
    return text.strip()


# env var -> (field, converter, required-by group or None)
_SPEC: dict[str, tuple[str, _Conv, str | None]] = {
    "DB_HOST": ("db_host", str, DB),
    "DB_PORT": ("db_port", _int(1, 65535), None),
    "DB_NAME": ("db_name", str, DB),
    "DB_USER": ("db_user", str, DB),
    "DB_PASSWORD": ("db_password", Secret, None),
    "DB_SSLMODE": ("db_sslmode", _choice(*SSL_MODES), None),
    "PG_BIN_DIR": ("pg_bin_dir", str, None),
    "COLDCOPY_SERVER_COMMAND": ("server_command", str, None),
    "DO_SPACES_KEY": ("spaces_key", str, STORAGE),
    "DO_SPACES_SECRET": ("spaces_secret", Secret, STORAGE),
    "DO_SPACES_BUCKET": ("spaces_bucket", _bucket, STORAGE),
    "DO_SPACES_REGION": ("spaces_region", str, None),
    "DO_SPACES_ENDPOINT": ("spaces_endpoint", _endpoint, None),
    "COLDCOPY_CLUSTER": ("cluster", _cluster, None),
    "BACKUP_ENCRYPTION_KEY": ("encryption_key", Secret, None),
    "COLDCOPY_ZSTD_LEVEL": ("zstd_level", _int(1, 19), None),
    "COLDCOPY_VOLUME_SIZE_MB": ("volume_size_mb", _int(1, 512), None),
    "COLDCOPY_UPLOAD_CONCURRENCY": ("upload_concurrency", _int(1, 32), None),
    "COLDCOPY_STALE_UPLOAD_SECONDS": ("stale_upload_seconds", _int(300, 7 * 86400), None),
    "COLDCOPY_ROW_COUNTS": ("row_counts", _choice("exact", "estimate"), None),
    "FULL_RETENTION_DAYS": ("full_retention_days", _int(1, 36500), None),
    "COMPLIANCE_RETENTION_DAYS": ("compliance_retention_days", _int(1, 36500), None),
    "WAL_RETENTION_DAYS": ("wal_retention_days", _int(1, 36500), None),
    "MONITOR_TOKEN": ("monitor_token", Secret, None),
    "COLDCOPY_SCHEDULE_FULL": ("schedule_full", _cron, None),
    "COLDCOPY_SCHEDULE_VERIFY": ("schedule_verify", _cron, None),
    "COLDCOPY_SCHEDULE_CLEANUP": ("schedule_cleanup", _cron, None),
    "COLDCOPY_SCHEDULE_COMPLIANCE": ("schedule_compliance", _cron, None),
    "COLDCOPY_SCHEDULE_WAL_SWEEP": ("schedule_wal_sweep", _cron, None),
    "COLDCOPY_SCHEDULE_GRACE_MINUTES": ("schedule_grace_minutes", _int(5, 7 * 1440), None),
    "COLDCOPY_HEARTBEAT_STALE_SECONDS": ("heartbeat_stale_seconds", _int(30, 86400), None),
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
    "VERIFY_SANITY_QUERIES": ("verify_sanity_queries", _sanity, None),
    "VERIFY_SAMPLE_OLDER": ("verify_sample_older", _int(0, 1000), None),
    "VERIFY_STATEMENT_TIMEOUT_SECONDS": ("verify_statement_timeout_seconds", _int(1, 86400), None),
}


def read_env_file(path: Path) -> dict[str, str]:
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def environment(env: Mapping[str, str] | None = None, env_file: Path | None = None) -> dict[str, str]:
    """The process environment over the .env file (the environment wins, as with doctl)."""
    base = dict(os.environ if env is None else env)
    path = env_file or Path(base.get("COLDCOPY_ENV_FILE", ".env"))
    merged = read_env_file(path) if path.is_file() else {}
    merged.update(base)
    return merged


def load_settings(
    env: Mapping[str, str] | None = None, *, need: tuple[str, ...] = (), env_file: Path | None = None
) -> Settings:
    """Build Settings; every missing or malformed value is reported at once."""
    values = environment(env, env_file)
    problems: list[str] = []
    kwargs: dict[str, Any] = {}
    for var, (name, conv, group) in _SPEC.items():
        raw = values.get(var, "").strip()
        if not raw:
            if group in need:
                problems.append(f"{var} is not set")
            continue
        try:
            kwargs[name] = conv(raw)
        except ValueError as exc:
            # Never echo a secret's value back.
            shown = "" if var in SECRET_VARS else f" (got {raw[:60]!r})"
            problems.append(f"{var} {exc}{shown}")
    problems += _feature_problems(values)
    if problems:
        raise ConfigError(problems)
    return Settings(**kwargs)


def _feature_problems(values: Mapping[str, str]) -> list[str]:
    """Settings that their features parse (alert thresholds, SMTP, retention tiers):
    checked here too, so a typo in any of them is reported with the rest, before anything connects."""
    from coldcopy.alerting.email import smtp_from
    from coldcopy.core.alerts import thresholds_from
    from coldcopy.core.retention import tiers_from

    problems: list[str] = []
    for parse in (thresholds_from, smtp_from, tiers_from):
        try:
            parse(values)
        except ConfigError as exc:
            problems += exc.problems
    return problems


def redact(text: str, settings: Settings | None) -> str:
    """Remove every configured secret from a string (for logs and error messages from subprocesses)."""
    if settings is None:
        return text
    for f in fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, Secret) and len(value.reveal()) >= 3:
            text = text.replace(value.reveal(), "***")
    return text
