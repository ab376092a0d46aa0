"""When the alert rules fire: the ``ALERT_*`` settings (``core.alerts`` has the rules).  A module
of its own so that reading the settings does not load the rules."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Thresholds:
    """When the rules fire (``ALERT_*`` settings; the defaults are the seed's)."""

    backup_max_age_hours: float = 26.0
    verify_max_age_days: float = 8.0
    wal_max_age_minutes: float = 60.0
    min_recovery_window_hours: float = 24.0
    size_low_ratio: float = 0.5
    size_high_ratio: float = 2.0
    size_sample: int = 10
    size_min_samples: int = 3
    heartbeat_stale_seconds: int = 600
    changes_max_age_minutes: float = 10.0
    changes_slot_lag_ratio: float = 0.5
    files_max_lag_hours: float = 6.0
