"""The heavy worker's Celery app."""

from __future__ import annotations

import os

from sous_core.tasks import HEAVY_PING_TASK
from sous_worker_heavy.worker import app, ping


def test_ping_is_routed_to_the_heavy_queue() -> None:
    assert HEAVY_PING_TASK in app.tasks
    assert app.amqp.router.route({}, HEAVY_PING_TASK)["queue"].name == "heavy"


def test_ping_reports_the_process_that_ran_it() -> None:
    assert ping.run()["pid"] == os.getpid()
