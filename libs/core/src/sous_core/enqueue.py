"""Publish a job's task and wait for the broker's confirm, within a bounded time."""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Sequence
from typing import Any

from celery import Celery
from kombu import Connection, Producer

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


def _send(app: Celery, job: Job, **options: Any) -> None:
    """The task message of ``job``: only its id, the task id being the job id."""
    app.send_task(
        TASK_FOR_KIND[job.kind],
        kwargs=JobPayload(job_id=job.id).as_kwargs(),
        task_id=str(job.id),
        # Outcomes live in the job row; a stored result would make the Redis backend
        # subscribe to a channel per published task.
        ignore_result=True,
        **options,
    )


def _send_on(app: Celery, producer: Producer, job: Job) -> None:
    """What :func:`_send` sends, through Celery's message builder and sender directly.

    ``send_task`` also resolves the task's registered options, the route, delayed
    delivery and a parent task, and returns a result handle: for a batch of jobs from
    the API that was a tenth of its CPU per job. None of that applies here (a job's
    task has no registered options where it is published, no countdown, no parent, no
    stored result); the message, its headers and the publish signals (which stamp
    ``sous_published_at`` and count it sent) are the same. The route is the one
    ``send_task`` takes (``task_routes`` by name).
    """
    name = TASK_FOR_KIND[job.kind]
    task_id = str(job.id)
    kwargs = JobPayload(job_id=job.id).as_kwargs()
    options = _route(app, name)
    message = app.amqp.create_task_message(
        task_id, name, (), kwargs,
        reply_to=app.thread_oid,
        create_sent_event=app.conf.task_send_sent_event,
        ignore_result=True,
        argsrepr="()",
        kwargsrepr=repr(kwargs),
        **options,
    )  # fmt: skip
    app.amqp.send_task_message(producer, name, message, retry=False, **options)


#: Routes by task name, per app (routing is by name only: ``task_routes``).
_ROUTES: weakref.WeakKeyDictionary[Celery, dict[str, dict[str, Any]]] = weakref.WeakKeyDictionary()


def _route(app: Celery, name: str) -> dict[str, Any]:
    """The publish options ``send_task`` routes ``name`` with (a copy: sending pops them)."""
    routes = _ROUTES.setdefault(app, {})
    if name not in routes:
        routes[name] = app.amqp.router.route({}, name, (), {}, None)
    return dict(routes[name])


def publish_job(app: Celery, job: Job, connection: Connection | None = None) -> None:
    """Send the task for ``job`` carrying only its id; the task id is the job id.

    Returns once RabbitMQ has confirmed the message (publisher confirms), so the job
    survives a broker restart from here on. Raises ``BrokerUnavailable`` otherwise.
    ``connection`` must have publisher confirms on when the app's connections do not
    (workers); the API's and the scheduler's apps confirm every publish.
    """
    timeout = get_settings().broker_publish_timeout
    try:
        _send(
            app,
            job,
            connection=connection,
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


def publish_jobs(app: Celery, jobs: Sequence[Job], connection: Connection | None = None) -> None:
    """Publish the tasks of many jobs, then wait once for RabbitMQ to confirm them all.

    :func:`publish_job` waits for each message's confirm before sending the next; a
    batch's children would queue behind one another's confirms. Here every message goes
    out on one channel in confirm mode and the broker's acks (often one ``multiple``
    ack for many) are collected at the end. Raises ``BrokerUnavailable`` unless every
    message was confirmed within the publish timeout (plus 10 ms a message); then some
    may still have been queued, as with any failed publish.

    ``connection`` (kept open by the caller, without ``confirm_publish``, used by one
    thread at a time) saves opening one per call; by default a new one is opened. A kept
    connection the broker closed meanwhile (a restart) is reopened and the batch sent
    again once, as a single publish retries once.
    """
    if not jobs:
        return
    timeout = get_settings().broker_publish_timeout + 0.01 * len(jobs)
    try:
        if connection is None:
            with app.connection_for_write() as fresh:
                _publish_on(app, fresh, jobs, timeout)
        else:
            try:
                _publish_on(app, connection, jobs, timeout)
            except (*connection.connection_errors, OSError) as exc:
                logger.info("publisher connection lost (%r): reconnecting once", exc)
                connection.close()
                _publish_on(app, connection, jobs, timeout)
    except BrokerUnavailable:
        raise
    except Exception as exc:
        logger.warning("publishing %d jobs failed: %r", len(jobs), exc)
        raise BrokerUnavailable(f"the message broker did not accept the jobs: {exc}") from exc


def _publish_on(app: Celery, connection: Connection, jobs: Sequence[Job], timeout: float) -> None:
    if not connection.connected:
        # Two attempts at once, each within the connect timeout (not kombu's 2 s pause).
        connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0)
    channel = connection.channel()
    try:
        if connection.transport.driver_type == "amqp":
            _publish_all_confirmed(app, connection, channel, jobs, timeout)
        else:
            # The embedded mode's broker (``filesystem://``) has no publisher confirms:
            # each publish is a file written before it returns.
            producer = Producer(channel)
            for job in jobs:
                _send_on(app, producer, job)
    finally:
        channel.close()


def _publish_all_confirmed(
    app: Celery, connection: Connection, channel: object, jobs: Sequence[Job], timeout: float
) -> None:
    confirmed: set[int] = set()
    confirmed_up_to = 0
    refused: list[int] = []

    def on_ack(delivery_tag: int, multiple: bool) -> None:
        nonlocal confirmed_up_to
        if multiple:
            confirmed_up_to = max(confirmed_up_to, delivery_tag)
        else:
            confirmed.add(delivery_tag)

    def on_nack(delivery_tag: int, multiple: bool) -> None:
        refused.append(delivery_tag)

    channel.confirm_select()  # type: ignore[attr-defined]
    channel.events["basic_ack"].add(on_ack)  # type: ignore[attr-defined]
    channel.events["basic_nack"].add(on_nack)  # type: ignore[attr-defined]
    producer = Producer(channel)
    for job in jobs:
        _send_on(app, producer, job)
    # Delivery tags count this channel's messages from 1, in publishing order.
    expected = len(jobs)
    deadline = time.monotonic() + timeout
    while True:
        if refused:
            raise BrokerUnavailable(f"the broker refused {len(refused)} of {expected} messages")
        if all(tag <= confirmed_up_to or tag in confirmed for tag in range(1, expected + 1)):
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BrokerUnavailable(f"no confirm for some of {expected} messages in {timeout:.1f}s")
        try:
            connection.drain_events(timeout=remaining)
        except TimeoutError:
            continue
