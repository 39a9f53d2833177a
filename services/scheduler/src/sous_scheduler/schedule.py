"""The platform's periodic maintenance: what runs when (times from ``SOUS_*`` settings)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sous_core.schedules import next_tick
from sous_core.settings import Settings
from sous_core.tasks import (
    EXPIRE_KEYS_TASK,
    PURGE_JOBS_TASK,
    REAP_STUCK_JOBS_TASK,
    REQUEUE_STALE_PENDING_TASK,
    RESET_QUOTAS_TASK,
    SWEEP_UPLOADS_TASK,
)


@dataclass(frozen=True)
class MaintenanceEntry:
    """One maintenance task and its ticks; a tick's time names it, for every scheduler alike."""

    name: str
    task: str
    #: The first tick strictly after the given time (aware UTC).
    next_tick: Callable[[datetime], datetime]
    #: Seconds after which an unconsumed message is dropped (the next tick supersedes it).
    expires: float | None = None


def every(seconds: float) -> Callable[[datetime], datetime]:
    """Ticks at whole multiples of ``seconds`` since the epoch, so all schedulers agree."""

    def following(after: datetime) -> datetime:
        count = math.floor(after.timestamp() / seconds) + 1
        return datetime.fromtimestamp(count * seconds, UTC)

    return following


def on_cron(expression: str, timezone: str) -> Callable[[datetime], datetime]:
    def following(after: datetime) -> datetime:
        return next_tick(expression, timezone, after)

    return following


def maintenance_schedule(settings: Settings) -> list[MaintenanceEntry]:
    zone = settings.maintenance_timezone
    return [
        MaintenanceEntry(
            "requeue-stale-pending",
            REQUEUE_STALE_PENDING_TASK,
            every(settings.pending_sweep_interval),
            expires=settings.pending_sweep_interval,
        ),
        MaintenanceEntry(
            "reap-stuck-jobs",
            REAP_STUCK_JOBS_TASK,
            every(settings.reaper_interval),
            expires=settings.reaper_interval,
        ),
        MaintenanceEntry(
            "reset-quotas", RESET_QUOTAS_TASK, on_cron(settings.quota_reset_cron, zone)
        ),
        MaintenanceEntry("expire-keys", EXPIRE_KEYS_TASK, on_cron(settings.key_expiry_cron, zone)),
        MaintenanceEntry("purge-jobs", PURGE_JOBS_TASK, on_cron(settings.retention_cron, zone)),
        MaintenanceEntry("sweep-uploads", SWEEP_UPLOADS_TASK, every(3600), expires=3600),
    ]
