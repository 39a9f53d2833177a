"""Publishing many jobs with one confirm wait: every message arrives, failures are loud."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from sous_core.celery_app import create_celery_app
from sous_core.celery_metrics import PUBLISHED_AT_HEADER, install_publisher_metrics
from sous_core.db.models import Job
from sous_core.enqueue import BrokerUnavailable, publish_job, publish_jobs
from sous_core.queues import FAST_QUEUE, HEAVY_QUEUE, declare_topology
from sous_core.settings import Settings
from sous_core.tasks import TASK_FOR_KIND
from support.stack import free_port, rabbitmqctl

pytestmark = pytest.mark.integration


@pytest.fixture
def vhost_app() -> Iterator[Celery]:
    vhost = f"sous_it_{secrets.token_hex(4)}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    settings = Settings(broker_url=f"amqp://guest:guest@127.0.0.1:5672/{vhost}")
    app = create_celery_app("publish-test", settings)
    try:
        with app.connection_for_write() as connection:
            declare_topology(connection, settings.max_deliveries)
        yield app
    finally:
        app.pool.force_close_all()
        rabbitmqctl("delete_vhost", vhost)


def _drain_messages(app: Celery, queue: str) -> list[Any]:
    messages = []
    with app.connection_for_write() as connection:
        channel = connection.channel()
        while (message := channel.basic_get(queue, no_ack=True)) is not None:
            messages.append(message)
        channel.close()
    return messages


def _drain_task_ids(app: Celery, queue: str) -> list[str]:
    return [message.headers["id"] for message in _drain_messages(app, queue)]


def test_every_job_of_a_large_batch_is_published_once_in_order(vhost_app: Celery) -> None:
    jobs = [Job(id=uuid.uuid4(), kind="fetch") for _ in range(250)]
    publish_jobs(vhost_app, jobs)
    assert _drain_task_ids(vhost_app, FAST_QUEUE) == [str(job.id) for job in jobs]


def test_an_unreachable_broker_is_a_broker_unavailable_error() -> None:
    settings = Settings(broker_url=f"amqp://guest:guest@127.0.0.1:{free_port()}//")
    app = create_celery_app("publish-test", settings)
    with pytest.raises(BrokerUnavailable, match="did not accept"):
        publish_jobs(app, [Job(id=uuid.uuid4(), kind="fetch")])


def test_no_jobs_publishes_nothing(vhost_app: Celery) -> None:
    publish_jobs(vhost_app, [])
    assert _drain_task_ids(vhost_app, FAST_QUEUE) == []


@pytest.mark.parametrize("kind", ["fetch", "email", "transcode"])
def test_a_batch_sends_the_very_message_a_single_publish_sends(
    vhost_app: Celery, kind: str
) -> None:
    # Batches build the message without send_task's extra steps: it must not differ.
    install_publisher_metrics()  # as the API does: the publish signal stamps the header
    job = Job(id=uuid.uuid4(), kind=kind)
    queue = HEAVY_QUEUE if kind == "transcode" else FAST_QUEUE
    publish_job(vhost_app, job)
    publish_jobs(vhost_app, [job])
    single, batched = _drain_messages(vhost_app, queue)

    def comparable(message: Any) -> tuple[dict[str, Any], dict[str, Any], bytes]:
        headers = dict(message.headers)
        assert float(headers.pop(PUBLISHED_AT_HEADER)) > 0  # stamped on both
        properties = {
            key: value
            for key, value in message.properties.items()
            if key not in {"application_headers", "delivery_info"}
        }
        return headers, properties, message.body

    assert comparable(batched) == comparable(single)
    assert batched.headers["id"] == str(job.id)
    assert batched.headers["task"] == TASK_FOR_KIND[kind]
    assert batched.headers["ignore_result"] is True
