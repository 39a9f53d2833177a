"""The platform's periodic maintenance, as a Celery beat schedule."""

from __future__ import annotations

from typing import Any

from sous_core.settings import Settings
from sous_core.tasks import REQUEUE_STALE_PENDING_TASK


def maintenance_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    interval = settings.pending_sweep_interval
    return {
        "requeue-stale-pending": {
            "task": REQUEUE_STALE_PENDING_TASK,
            "schedule": interval,
            # A sweep nobody ran before the next one is due is redundant: drop it.
            "options": {"expires": interval},
        },
    }
