"""Operator tools for the ``dead_letter`` queue: list, replay and purge dead task messages.

Reading never consumes: messages are taken with ``basic.get`` and not acknowledged,
so while a command holds them nobody else sees them, and each one it does not settle
is handed back (``basic.reject`` with ``requeue``) in the order it was taken. Quorum
queues put returned messages back at the head, so the queue keeps its order; a command
that dies mid-way loses nothing either, as the broker returns unacknowledged messages
when its connection closes. Returns are not limited on ``dead_letter`` (it has no
``x-delivery-limit``), so listing as often as you like never drops a message.

Replay is at-least-once: the job goes back to ``queued`` and the message is published
(with a publisher confirm) in one database transaction, and only after that commits is
the dead letter acknowledged. A crash in between leaves the dead letter in place, and a
second replay refuses it because the job is no longer failed.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kombu import Connection, Message, Producer

from sous_core import jobs
from sous_core.db.engine import session_scope
from sous_core.dead_letters import job_id_of, queue_of
from sous_core.queues import dead_letter_queue
from sous_core.tasks import TASK_FOR_KIND

logger = logging.getLogger("sous.dead_letter_admin")

#: Headers RabbitMQ adds when it dead-letters or delivers a message; a replayed message
#: starts afresh without them (and with a new delivery count in its queue).
BROKER_HEADER_PREFIXES = ("x-death", "x-first-death-", "x-last-death-", "x-delivery-count")
#: Tasks whose message is a job's (their task id is the job id).
JOB_TASKS = frozenset(TASK_FOR_KIND.values())
#: Seconds to wait for the broker to connect and to confirm a replayed message.
BROKER_TIMEOUT = 10.0


@dataclass(frozen=True)
class DeadLetter:
    """What an operator needs to know about one dead letter."""

    job_id: uuid.UUID | None
    task: str | None
    queue: str
    reason: str
    #: Deliveries before the broker gave up, when the reason says (``delivery_limit``).
    deliveries: int | None
    died_at: datetime | None

    def as_json(self) -> dict[str, Any]:
        return {
            "job_id": None if self.job_id is None else str(self.job_id),
            "task": self.task,
            "queue": self.queue,
            "reason": self.reason,
            "deliveries": self.deliveries,
            "died_at": None if self.died_at is None else self.died_at.isoformat(),
        }


def describe(message: Message, max_deliveries: int) -> DeadLetter:
    """A dead letter's job, task, original queue, reason, deliveries and time of death.

    The message does not carry how often it was delivered (its ``x-death`` count is the
    number of times it was dead-lettered), but ``delivery_limit`` means the queue's limit
    was reached, which is ``SOUS_MAX_DELIVERIES``.
    """
    headers = message.headers or {}
    task = headers.get("task")
    reason = str(headers.get("x-first-death-reason") or "unknown")
    deaths = [death for death in headers.get("x-death") or [] if isinstance(death, dict)]
    died_at = deaths[-1].get("time") if deaths else None
    if isinstance(died_at, datetime) and died_at.tzinfo is None:
        died_at = died_at.replace(tzinfo=UTC)  # AMQP timestamps are UTC seconds.
    return DeadLetter(
        job_id=job_id_of(message) if task in JOB_TASKS else None,
        task=str(task) if task else None,
        queue=queue_of(message),
        reason=reason,
        deliveries=max_deliveries if reason == "delivery_limit" else None,
        died_at=died_at if isinstance(died_at, datetime) else None,
    )


@contextmanager
def _held_dead_letters(connection: Connection, limit: int | None) -> Iterator[list[Message]]:
    """Up to ``limit`` dead letters (all when ``None``), held unacknowledged, oldest first.

    Whatever the caller leaves unsettled goes back to the queue, in the order taken.
    """
    queue = dead_letter_queue().bind(connection.default_channel)
    queue.declare()
    held: list[Message] = []
    try:
        while limit is None or len(held) < limit:
            message = queue.get(no_ack=False, accept=["json"])
            if message is None:
                break
            held.append(message)
        yield held
    finally:
        for message in held:
            if not message.acknowledged:
                message.reject(requeue=True)


def _connection(broker_url: str) -> Connection:
    return Connection(
        broker_url,
        connect_timeout=BROKER_TIMEOUT,
        transport_options={"confirm_publish": True},
    )


def list_dead_letters(broker_url: str, limit: int, max_deliveries: int) -> list[DeadLetter]:
    """The first ``limit`` dead letters, oldest first; the queue is left as it was."""
    with _connection(broker_url) as connection, _held_dead_letters(connection, limit) as held:
        return [describe(message, max_deliveries) for message in held]


@dataclass
class ReplayReport:
    replayed: list[DeadLetter] = field(default_factory=list)
    #: Dead letters left in the queue, with the reason.
    skipped: list[tuple[DeadLetter, str]] = field(default_factory=list)
    #: Job ids asked for that have no dead letter.
    not_found: list[uuid.UUID] = field(default_factory=list)


def _republish(producer: Producer, message: Message, queue: str) -> None:
    """Publish the task message again, straight to ``queue``, and wait for the confirm."""
    headers = {
        name: value
        for name, value in (message.headers or {}).items()
        if not name.startswith(BROKER_HEADER_PREFIXES)
    }
    properties = message.properties
    producer.publish(
        message.body,
        exchange="",
        routing_key=queue,
        headers=headers,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=2,
        correlation_id=properties.get("correlation_id"),
        reply_to=properties.get("reply_to"),
        priority=properties.get("priority"),
        # Unroutable (the queue is gone) is an error, not a silent drop.
        mandatory=True,
        retry=False,
        timeout=BROKER_TIMEOUT,
        confirm_timeout=BROKER_TIMEOUT,
    )


def _replay_one(producer: Producer, message: Message, letter: DeadLetter) -> str | None:
    """Replay one dead letter; the reason it was left in the queue, or ``None``."""
    if letter.queue == "unknown":
        return "the message does not say which queue it came from"
    try:
        if letter.job_id is None:
            _republish(producer, message, letter.queue)
        else:
            # The row is locked until commit: a worker taking the message at once waits
            # for the lock (jobs.start_job), then finds the job queued.
            with session_scope() as session:
                jobs.requeue_failed(session, letter.job_id)
                _republish(producer, message, letter.queue)
    except jobs.JobNotFound:
        return "the job no longer exists (purge it)"
    except jobs.RequeueRefused as exc:
        return str(exc)
    except Exception as exc:
        logger.warning("replaying the dead letter of job %s failed: %r", letter.job_id, exc)
        return f"the broker did not take the message: {exc!r}"
    message.ack()
    return None


def replay(
    broker_url: str, job_ids: Collection[uuid.UUID] | None, max_deliveries: int
) -> ReplayReport:
    """Send dead letters back to the queue they came from; ``job_ids=None`` replays all.

    A job's dead letter is replayed only while the job is ``failed`` (the worker that
    consumed ``dead_letter.jobs`` has recorded the failure); the job becomes ``queued``
    with its attempts kept. Dead letters of other tasks (maintenance) are just
    republished. Each replayed message is removed from ``dead_letter``; the others stay.
    """
    wanted = None if job_ids is None else set(job_ids)
    report = ReplayReport()
    seen: set[uuid.UUID] = set()
    with _connection(broker_url) as connection, _held_dead_letters(connection, None) as held:
        producer = Producer(connection.default_channel)
        for message in held:
            letter = describe(message, max_deliveries)
            if letter.job_id is not None:
                seen.add(letter.job_id)
            if wanted is not None and letter.job_id not in wanted:
                continue
            reason = _replay_one(producer, message, letter)
            if reason is None:
                report.replayed.append(letter)
                logger.warning("replayed dead letter of job %s to %s", letter.job_id, letter.queue)
            else:
                report.skipped.append((letter, reason))
    report.not_found = sorted(wanted - seen) if wanted is not None else []
    return report


def purge(broker_url: str) -> int:
    """Delete every dead letter (ready ones: a command holding some keeps them); how many."""
    with _connection(broker_url) as connection:
        queue = dead_letter_queue().bind(connection.default_channel)
        queue.declare()
        return int(queue.purge() or 0)
