"""The scheduler's Celery app: ``celery -A sous_scheduler.beat beat``.

Beat runs :class:`sous_scheduler.scheduler.SousScheduler`, which claims every tick in
PostgreSQL; the Helm chart runs one replica, and a second one by mistake is harmless.
"""

from __future__ import annotations

from typing import Any

from celery.signals import setup_logging

from sous_core.celery_app import create_celery_app
from sous_core.logs import configure_logging

app = create_celery_app("sous-scheduler", publisher_confirms=True)
app.conf.beat_scheduler = "sous_scheduler.scheduler:SousScheduler"
# Beat never sleeps longer than this between two looks at its schedule.
app.conf.beat_max_loop_interval = 5


@setup_logging.connect
def _logging(**_kwargs: Any) -> None:
    configure_logging()
