"""Publish a job's task and wait for the broker's confirm, within a bounded time."""

from __future__ import annotations

import logging

from celery import Celery
from kombu import Connection

from sous_core.db.models import Job
from sous_core.settings import get_settings
from sous_core.tasks import TASK_FOR_KIND, JobPayload

logger = logging.getLogger("sous.enqueue")


def confirmed_connection(app: Celery) -> Connection:
    """A connection whose publishes wait for RabbitMQ's confirm, for apps without confirms.

    Workers publish follow-up jobs (a batch's children, a sweep's requeues) over one.
    """
    return app.connection_for_write(transport_options={"confirm_publish": True})


class BrokerUnavailable(RuntimeError):
    """The broker did not take (and confirm) the message in time."""


def publish_job(app: Celery, job: Job, connection: Connection | None = None) -> None:
    """Send the task for ``job`` carrying only its id; the task id is the job id.

    Returns once RabbitMQ has confirmed the message (publisher confirms), so the job
    survives a broker restart from here on. Raises ``BrokerUnavailable`` otherwise.
    ``connection`` must have publisher confirms on when the app's connections do not
    (workers); the API's and the scheduler's apps confirm every publish.
    """
    timeout = get_settings().broker_publish_timeout
    try:
        app.send_task(
            TASK_FOR_KIND[job.kind],
            kwargs=JobPayload(job_id=job.id).as_kwargs(),
            task_id=str(job.id),
            connection=connection,
            # Outcomes live in the job row; a stored result would make the Redis backend
            # subscribe to a channel per published task.
            ignore_result=True,
            retry=True,
            retry_policy={
                "max_retries": 1,
                "interval_start": 0,
                "interval_step": 0.1,
                "interval_max": 0.1,
            },
            confirm_timeout=timeout,
            timeout=timeout,
        )
    except Exception as exc:
        logger.warning("publishing job %s failed: %r", job.id, exc)
        raise BrokerUnavailable(f"the message broker did not accept the job: {exc}") from exc
