"""The Celery app factory every Sous process uses; pool and queues come from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import beat_init, worker_init

from sous_core.queues import FAST_QUEUE, TASK_EXCHANGE, declare_topology, task_queues
from sous_core.settings import Settings, get_settings
from sous_core.tasks import TASK_ROUTES


def create_celery_app(
    main: str, settings: Settings | None = None, *, publisher_confirms: bool = False
) -> Celery:
    """A Celery app with Sous's topology and at-least-once delivery settings.

    ``publisher_confirms`` makes every publish wait for RabbitMQ's confirm: on for
    the API and the scheduler, which must know a job reached the broker. Workers
    leave it off: with confirms on, a gevent worker's event dispatcher deadlocks
    (its heartbeat greenlet waits on a confirm while holding the dispatcher lock).
    """
    settings = settings or get_settings()
    app = Celery(main, broker=settings.broker_url, backend=settings.result_backend)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_queues=task_queues(settings.max_deliveries),
        task_default_queue=FAST_QUEUE,
        task_default_exchange=TASK_EXCHANGE.name,
        task_default_exchange_type=TASK_EXCHANGE.type,
        task_default_routing_key=FAST_QUEUE,
        task_routes={name: {"queue": queue} for name, queue in TASK_ROUTES.items()},
        task_create_missing_queues=False,
        # At least once: ack after the task ran, and requeue when its worker process died.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_prefetch_multiplier=1,
        # Outcomes live in the job table; only groups and chords need stored results.
        task_ignore_result=True,
        result_expires=24 * 3600,
        # One result backend per process: Celery otherwise makes one per thread, and a
        # gevent worker has a "thread" (greenlet) per task, so it built one for each task.
        result_backend_thread_safe=True,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=settings.broker_publish_timeout / 2,
        broker_transport_options={"confirm_publish": publisher_confirms},
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        # Task events cost a publish per task state (a tenth of a fast job's CPU); Flower
        # switches them on while it watches (it sends enable_events), so they are off by
        # default. Metrics come from the workers themselves, not from events.
        worker_send_task_events=False,
        # A task-sent event is one more confirmed publish per job, made under a lock that
        # every API request thread shares; the API counts what it sends itself.
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
        enable_utc=True,
        timezone="UTC",
    )
    if settings.broker_url.startswith("filesystem://"):
        app.conf.broker_transport_options = filesystem_transport_options(settings.embedded_dir)
    _declare_topology_on_start(app, settings)
    return app


def filesystem_transport_options(folder: Path) -> dict[str, Any]:
    """kombu ``filesystem://`` options for the embedded mode, creating the folders it needs.

    Producers write to ``data_folder_out`` and consumers read ``data_folder_in``; one
    folder for both lets every process reach every queue. Exchange bindings live in
    ``control_folder``, so a publisher routes through the topic exchange to queues that
    only a worker in another process declared.
    """
    messages, control, processed = folder / "messages", folder / "control", folder / "processed"
    for path in (messages, control, processed):
        path.mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(messages),
        "data_folder_out": str(messages),
        "control_folder": str(control),
        "processed_folder": str(processed),
        "store_processed": False,
        # The transport polls the folder; 0.2 s keeps job latency low at little CPU cost.
        "polling_interval": 0.2,
    }


def _declare_topology_on_start(app: Celery, settings: Settings) -> None:
    """Workers and beat declare the whole topology before consuming or scheduling.

    Queues a process does not consume (and the dead-letter queue) must exist too:
    Celery binds all of them for delayed delivery, and RabbitMQ needs the
    dead-letter exchange to exist when it dead-letters a message.
    """
    if not settings.broker_is_amqp:
        return

    def declare(sender: Any = None, **_kwargs: Any) -> None:
        # Signals are global: act only for the worker or beat running this app.
        if getattr(sender, "app", None) is not app:
            return
        with sender.app.connection_for_write() as connection:
            declare_topology(connection, settings.max_deliveries)

    worker_init.connect(declare, weak=False)
    beat_init.connect(declare, weak=False)
