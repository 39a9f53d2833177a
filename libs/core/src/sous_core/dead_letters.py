"""Mark the job of a dead-lettered task failed: its message killed its worker too often.

RabbitMQ copies each dead letter into ``dead_letter`` (kept for operators) and
``dead_letter.jobs``; workers consume the latter with ``DeadLetterWatcher``.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from celery import bootsteps
from kombu import Consumer, Message

from sous_core import jobs, metrics
from sous_core.db.engine import session_scope
from sous_core.queues import DEAD_LETTER_JOBS_QUEUE, dead_letter_queue
from sous_core.settings import get_settings
from sous_core.states import IllegalTransition, JobState

logger = logging.getLogger("sous.dead_letters")


def job_id_of(message: Message) -> uuid.UUID | None:
    """The job a Celery task message was for (its task id, or its ``job_id`` argument)."""
    candidates = [(message.headers or {}).get("id")]
    body = message.decode() if message.content_type == "application/json" else None
    if isinstance(body, list) and len(body) >= 2 and isinstance(body[1], dict):
        candidates.append(body[1].get("job_id"))
    for candidate in candidates:
        try:
            return uuid.UUID(str(candidate))
        except ValueError:
            continue
    return None


def reason_of(message: Message, max_deliveries: int) -> str:
    """Why RabbitMQ dead-lettered the message, in words.

    ``x-death``'s ``count`` is how many times the message was dead-lettered (once), not
    how often it was delivered; a quorum queue dead-letters with ``delivery_limit`` once
    the message was delivered ``max_deliveries`` times (its ``x-delivery-limit`` + 1).
    """
    reason = str((message.headers or {}).get("x-first-death-reason", "dead-lettered"))
    if reason == "delivery_limit":
        return f"delivery_limit: delivered {max_deliveries} times"
    return reason


def fail_dead_lettered_job(job_id: uuid.UUID, reason: str) -> bool:
    """Fail the job unless it already finished; True if this call failed it."""
    message = (
        f"The job was abandoned after its worker stopped while running it too many times "
        f"({reason}); the task message was moved to the dead-letter queue."
    )
    with session_scope() as session:
        try:
            jobs.transition(
                session, job_id, JobState.FAILED, error_code="worker_lost", error_message=message
            )
        except (IllegalTransition, jobs.JobNotFound) as exc:
            logger.info("dead letter for job %s left as is: %s", job_id, exc)
            return False
    logger.warning("job %s failed: dead-lettered (%s)", job_id, reason)
    return True


def queue_of(message: Message) -> str:
    """The queue a dead letter came from (its first death), ``unknown`` if not recorded."""
    queue = (message.headers or {}).get("x-first-death-queue")
    return str(queue) if queue else "unknown"


def handle_dead_letter(_body: Any, message: Message) -> None:
    metrics.DEAD_LETTERED.labels(queue_name=queue_of(message)).inc()
    job_id = job_id_of(message)
    if job_id is None:
        logger.error("dead letter without a job id; headers=%r", message.headers)
    else:
        fail_dead_lettered_job(job_id, reason_of(message, get_settings().max_deliveries))
    message.ack()


class DeadLetterWatcher(bootsteps.ConsumerStep):
    """Worker bootstep consuming ``dead_letter.jobs`` beside the task queues."""

    def get_consumers(self, channel: Any) -> list[Consumer]:
        return [
            Consumer(
                channel,
                queues=[dead_letter_queue(DEAD_LETTER_JOBS_QUEUE)],
                callbacks=[handle_dead_letter],
                accept=["json"],
            )
        ]
