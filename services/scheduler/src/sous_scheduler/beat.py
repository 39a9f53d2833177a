"""The scheduler's Celery app: ``celery -A sous_scheduler.beat beat`` (exactly one replica)."""

from __future__ import annotations

from typing import Any

from celery.signals import setup_logging

from sous_core.celery_app import create_celery_app
from sous_core.logs import configure_logging

app = create_celery_app("sous-scheduler", publisher_confirms=True)


@setup_logging.connect
def _logging(**_kwargs: Any) -> None:
    configure_logging()
