"""The maintenance schedule."""

from __future__ import annotations

from sous_core.settings import Settings
from sous_core.tasks import REQUEUE_STALE_PENDING_TASK, TASK_ROUTES
from sous_scheduler.schedule import maintenance_schedule


def test_sweep_runs_at_the_configured_interval_and_expires_before_the_next() -> None:
    entry = maintenance_schedule(Settings(pending_sweep_interval=30))["requeue-stale-pending"]
    assert entry["task"] == REQUEUE_STALE_PENDING_TASK
    assert entry["schedule"] == 30
    assert entry["options"]["expires"] == 30
    assert TASK_ROUTES[REQUEUE_STALE_PENDING_TASK] == "maintenance"
