"""What a base-backup drill aims at and what it reads back.  Pure: no I/O.

The drill (:mod:`coldcopy.verify.base_drill`) recovers a copy to a random time between the backup's
end and the newest archived commit (``choose_target``), found with ``pg_waldump``
(``parse_waldump``), on a private server (``drill_settings``), and checks from the server log that
recovery stopped at the first commit after the target (``stop_time_from_log``).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from coldcopy.core.lsn import parse_lsn
from coldcopy.core.recovery_plan import Target

_COMMIT = re.compile(
    r"lsn: ([0-9A-F]+/[0-9A-F]+),.*?desc: (?:COMMIT|ABORT)\S* (?:\d+: )?"
    r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) UTC"
)


@dataclass(frozen=True)
class Commit:
    """A commit (or abort) record: where it is in the WAL and when it was made."""

    lsn: int
    at: datetime


def parse_waldump(text: str) -> list[Commit]:
    """Commit and abort records (both end a recovery to a time) from ``TZ=UTC pg_waldump`` output."""
    out = []
    for m in _COMMIT.finditer(text):
        when = datetime.strptime(m[2], "%Y-%m-%d %H:%M:%S.%f" if "." in m[2] else "%Y-%m-%d %H:%M:%S")
        out.append(Commit(parse_lsn(m[1]), when.replace(tzinfo=UTC)))
    return out


def choose_target(consistent_at: datetime, newest_commit: datetime | None, rng: random.Random) -> Target:
    """A random time in [consistent_at, newest_commit): a commit after it ends the recovery.

    ``consistent_at`` is the backup's stop time (server clock, read after pg_basebackup ended), so
    every commit before the backup's end LSN is older and recovery is consistent before it stops.
    Without a commit after it: the end of the backup (immediate).
    """
    if newest_commit is None or newest_commit <= consistent_at:
        return Target("immediate")
    span = (newest_commit - consistent_at) // timedelta(microseconds=1)
    return Target("time", time=consistent_at + timedelta(microseconds=rng.randrange(span)))


def drill_settings(folder: Path) -> dict[str, str]:
    """Settings that make the recovered copy private and able to start on a small machine.

    Private means it reaches nothing either (``prepare_recovery`` already drops a standby's
    primary_conninfo and standby.signal): no logical-replication apply workers (a promoted copy
    would consume the real subscriber's slot), no preloaded libraries (pg_cron would run jobs,
    pg_net would send queued requests).
    """
    return {
        "listen_addresses": "",
        "unix_socket_directories": str(folder),
        "hba_file": str(folder / "pg_hba.conf"),
        "hot_standby": "off",
        "shared_buffers": "128MB",
        "logging_collector": "off",
        "ssl": "off",
        "max_logical_replication_workers": "0",
        "shared_preload_libraries": "",
        "recovery_end_command": "",
        "external_pid_file": "",
    }


_STOPPING = re.compile(
    r"recovery stopping before (?:commit|abort) of transaction \d+, time "
    r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?)([+-]\d\d)(?::?(\d\d))?"
)


def stop_time_from_log(text: str) -> datetime | None:
    """When the commit recovery stopped before was made, from the server log (any time zone)."""
    m = _STOPPING.search(text)
    if m is None:
        return None
    when = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S.%f" if "." in m[1] else "%Y-%m-%d %H:%M:%S")
    sign = -1 if m[2].startswith("-") else 1
    offset = timedelta(hours=int(m[2][1:]), minutes=int(m[3] or 0)) * sign
    return (when - offset).replace(tzinfo=UTC)
