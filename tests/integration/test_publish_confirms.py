"""Publishing many jobs with one confirm wait: every message arrives, failures are loud."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator

import pytest
from celery import Celery

from sous_core.celery_app import create_celery_app
from sous_core.db.models import Job
from sous_core.enqueue import BrokerUnavailable, publish_jobs
from sous_core.queues import FAST_QUEUE, declare_topology
from sous_core.settings import Settings
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


def _drain_task_ids(app: Celery, queue: str) -> list[str]:
    ids = []
    with app.connection_for_write() as connection:
        channel = connection.channel()
        while (message := channel.basic_get(queue, no_ack=True)) is not None:
            ids.append(message.headers["id"])
        channel.close()
    return ids


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
