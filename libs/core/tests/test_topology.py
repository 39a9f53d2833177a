"""Queue topology and Celery settings that the delivery guarantees rest on."""

from __future__ import annotations

from sous_core.celery_app import create_celery_app
from sous_core.job_runner import retry_delay
from sous_core.queues import WORK_QUEUES, dead_letter_queue, task_queues
from sous_core.settings import Settings
from sous_core.tasks import TASK_FOR_KIND, TASK_ROUTES


def test_work_queues_are_durable_quorum_queues_that_dead_letter() -> None:
    queues = {queue.name: queue for queue in task_queues(max_deliveries=5)}
    assert set(queues) == set(WORK_QUEUES) == {"heavy", "fast", "maintenance"}
    for queue in queues.values():
        assert queue.durable
        assert queue.exchange.type == "topic"
        assert queue.queue_arguments["x-queue-type"] == "quorum"
        assert queue.queue_arguments["x-delivery-limit"] == 4
        assert queue.queue_arguments["x-dead-letter-exchange"] == dead_letter_queue().exchange.name


def test_every_task_is_routed_to_a_declared_queue() -> None:
    assert set(TASK_ROUTES.values()) <= set(WORK_QUEUES)
    assert set(TASK_FOR_KIND.values()) <= set(TASK_ROUTES)


def test_celery_app_is_json_only_late_ack_and_refuses_unknown_queues() -> None:
    app = create_celery_app("test", Settings(), publisher_confirms=True)
    conf = app.conf
    assert conf.accept_content == ["json"]
    assert conf.task_serializer == "json"
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.task_create_missing_queues is False
    assert conf.broker_transport_options["confirm_publish"] is True
    assert conf.task_routes["sous.fetch"] == {"queue": "fast"}
    assert {queue.name for queue in conf.task_queues} == set(WORK_QUEUES)
    worker_app = create_celery_app("worker", Settings())
    assert worker_app.conf.broker_transport_options["confirm_publish"] is False


def test_retry_delay_grows_within_bounds_in_whole_seconds() -> None:
    for retries in range(8):
        ceiling = max(1, min(60, 2 * 2**retries))
        delays = {retry_delay(retries, base=2, cap=60) for _ in range(200)}
        assert all(isinstance(d, int) and 1 <= d <= ceiling for d in delays)
    assert len({retry_delay(5, base=2, cap=60) for _ in range(200)}) > 5
