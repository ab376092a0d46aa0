"""`.env.example` documents every setting the product reads."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Settings are the upper-case names in quotes with one of these prefixes (plus the DB_/DO_ ones).
SETTING = re.compile(
    r'"((?:DB|DO|BACKUP|COLDCOPY|ALERT|SMTP|VERIFY|MONITOR|FULL|COMPLIANCE|WAL|PG|RUNNER|SUPABASE|GDPR)_[A-Z0-9_]+)"'
)
# where .env itself is; a data-dir file; a marker wal-fetch's fast path leaves for its own CLI
NOT_SETTINGS = {"COLDCOPY_ENV_FILE", "PG_VERSION", "COLDCOPY_SPOOL_TRIED"}


def test_every_setting_is_documented() -> None:
    read = set()
    for path in (ROOT / "lib" / "coldcopy").rglob("*.py"):
        if "localstack" in path.parts:
            continue
        read |= set(SETTING.findall(path.read_text()))
    documented = set(re.findall(r"^([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))
    missing = sorted(n for n in read - documented - NOT_SETTINGS if not n.endswith("_"))  # not prefixes
    assert not missing, f"add these to .env.example: {missing}"
    assert len(read) > 40  # the scan found the settings at all
