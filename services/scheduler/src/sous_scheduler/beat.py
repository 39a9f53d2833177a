"""The scheduler's Celery app: ``celery -A sous_scheduler.beat beat``.

Beat runs :class:`sous_scheduler.scheduler.SousScheduler`, which claims every tick in
PostgreSQL; the Helm chart runs one replica, and a second one by mistake is harmless.
Being one per installation, the scheduler also exports the queue depth read from the
broker (``celery_queue_length`` and friends) on its metrics port.
"""

from __future__ import annotations

from sous_core.brokerstats import BrokerQueueCollector
from sous_core.celery_app import create_celery_app
from sous_core.observability import observe_scheduler
from sous_core.settings import get_settings

app = create_celery_app("sous-scheduler", publisher_confirms=True)
app.conf.beat_scheduler = "sous_scheduler.scheduler:SousScheduler"
# Beat never sleeps longer than this between two looks at its schedule.
app.conf.beat_max_loop_interval = 5

_settings = get_settings()
observe_scheduler(
    "sous-scheduler",
    [BrokerQueueCollector(_settings.broker_url, _settings.rabbitmq_management_url)],
)
