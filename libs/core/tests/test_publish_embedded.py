"""Publishing a batch of jobs on the embedded mode's broker (``filesystem://``, no confirms)."""

from __future__ import annotations

import uuid
from pathlib import Path

from sous_core.celery_app import create_celery_app
from sous_core.db.models import Job
from sous_core.enqueue import publish_jobs
from sous_core.queues import FAST_QUEUE
from sous_core.settings import Settings


def test_a_batch_is_published_on_the_filesystem_broker(tmp_path: Path) -> None:
    settings = Settings(broker_url="filesystem://", embedded_dir=tmp_path / "broker")
    app = create_celery_app("embedded-test", settings)
    jobs = [Job(id=uuid.uuid4(), kind="fetch") for _ in range(5)]
    publish_jobs(app, jobs)
    received = []
    with app.connection_for_read() as connection:
        channel = connection.channel()
        while (message := channel.basic_get(FAST_QUEUE, no_ack=True)) is not None:
            received.append(message.headers["id"])
        channel.close()
    # Each once; the filesystem broker orders messages written within a millisecond by
    # a random file name, so not necessarily in publishing order.
    assert sorted(received) == sorted(str(job.id) for job in jobs)
