"""The maintenance schedule: what runs when, with ticks every scheduler agrees on."""

from __future__ import annotations

from datetime import UTC, datetime

from sous_core.settings import Settings
from sous_core.tasks import (
    EXPIRE_KEYS_TASK,
    PURGE_JOBS_TASK,
    REAP_STUCK_JOBS_TASK,
    REQUEUE_STALE_PENDING_TASK,
    RESET_QUOTAS_TASK,
    SWEEP_UPLOADS_TASK,
    TASK_ROUTES,
)
from sous_scheduler.schedule import every, maintenance_schedule


def test_every_entry_is_a_maintenance_task_with_its_configured_times() -> None:
    settings = Settings(
        pending_sweep_interval=30,
        reaper_interval=60,
        quota_reset_cron="0 0 * * *",
        key_expiry_cron="0 3 * * 1",
        retention_cron="0 4 1 * *",
        maintenance_timezone="Europe/Paris",
    )
    entries = {entry.name: entry for entry in maintenance_schedule(settings)}
    assert {name: entry.task for name, entry in entries.items()} == {
        "requeue-stale-pending": REQUEUE_STALE_PENDING_TASK,
        "reap-stuck-jobs": REAP_STUCK_JOBS_TASK,
        "reset-quotas": RESET_QUOTAS_TASK,
        "expire-keys": EXPIRE_KEYS_TASK,
        "purge-jobs": PURGE_JOBS_TASK,
        "sweep-uploads": SWEEP_UPLOADS_TASK,
    }
    assert all(TASK_ROUTES[entry.task] == "maintenance" for entry in entries.values())
    assert entries["requeue-stale-pending"].expires == 30

    after = datetime(2026, 11, 21, 23, 30, tzinfo=UTC)  # 00:30 in Paris, a Sunday
    assert entries["reset-quotas"].next_tick(after) == datetime(2026, 11, 22, 23, 0, tzinfo=UTC)
    # Monday 03:00 Paris time.
    assert entries["expire-keys"].next_tick(after) == datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
    assert entries["purge-jobs"].next_tick(after) == datetime(2026, 12, 1, 3, 0, tzinfo=UTC)


def test_interval_ticks_are_aligned_so_two_schedulers_name_them_alike() -> None:
    following = every(60)
    one = following(datetime(2026, 11, 22, 10, 0, 1, tzinfo=UTC))
    other = following(datetime(2026, 11, 22, 10, 0, 59, 900000, tzinfo=UTC))
    assert one == other == datetime(2026, 11, 22, 10, 1, tzinfo=UTC)
    assert following(one) == datetime(2026, 11, 22, 10, 2, tzinfo=UTC)
