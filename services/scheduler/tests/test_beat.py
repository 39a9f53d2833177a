"""The scheduler's Celery app."""

from __future__ import annotations

from sous_scheduler.beat import app


def test_scheduler_publishes_with_confirms() -> None:
    assert app.conf.broker_transport_options["confirm_publish"] is True
    assert app.conf.timezone == "UTC"
