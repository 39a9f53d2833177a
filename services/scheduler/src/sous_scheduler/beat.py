"""The scheduler's Celery app: ``celery -A sous_scheduler.beat beat`` (exactly one replica)."""

from __future__ import annotations

from typing import Any

from celery.signals import setup_logging

from sous_core.celery_app import create_celery_app
from sous_core.logs import configure_logging
from sous_core.settings import get_settings
from sous_scheduler.schedule import maintenance_schedule

app = create_celery_app("sous-scheduler", publisher_confirms=True)
app.conf.beat_schedule = maintenance_schedule(get_settings())


@setup_logging.connect
def _logging(**_kwargs: Any) -> None:
    configure_logging()
