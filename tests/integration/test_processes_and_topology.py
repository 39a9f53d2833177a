"""Every process starts and connects; the broker topology bounds redeliveries."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from kombu import Connection, Consumer, Producer

import process_commands
from sous_core.celery_app import create_celery_app
from sous_core.queues import (
    DEAD_LETTER_QUEUE,
    TASK_EXCHANGE,
    dead_letter_queue,
    declare_topology,
    work_queue,
)
from sous_core.settings import Settings
from sous_core.tasks import HEAVY_PING_TASK
from support.stack import make_stack, wait_until

pytestmark = pytest.mark.integration


def test_scheduler_declares_the_topology_on_a_fresh_broker(tmp_path: Path) -> None:
    with make_stack(tmp_path) as own:
        assert all(q["ready"] is None for q in own.queue_stats().values())

        beat = own.start("scheduler", *process_commands.scheduler())
        beat.wait_for_log(r"beat: Starting", 60)

        def declared() -> bool:
            stats = own.queue_stats()
            return all(
                stats[name]["ready"] == 0
                for name in ("heavy", "fast", "maintenance", "dead_letter")
            )

        wait_until(declared, 30, "beat to declare every queue", interval=1)
        assert beat.popen.poll() is None


def test_heavy_worker_runs_tasks_in_prefork_children(tmp_path: Path) -> None:
    with make_stack(tmp_path) as own:
        worker = own.start(
            "worker-heavy", *process_commands.worker_heavy(), "--without-mingle", "--without-gossip"
        )
        worker.wait_for_log(r"ready\.", 60)
        settings = Settings(
            broker_url=own.env["SOUS_BROKER_URL"], result_backend=own.env["SOUS_RESULT_BACKEND"]
        )
        app = create_celery_app("test-client", settings, publisher_confirms=True)
        try:
            results = [app.send_task(HEAVY_PING_TASK) for _ in range(4)]
            answers = [result.get(timeout=30) for result in results]
        finally:
            app.close()
        child_pids = {answer["pid"] for answer in answers}
        assert worker.popen.pid not in child_pids
        assert all(pid != os.getpid() for pid in child_pids)
        assert f"Task {HEAVY_PING_TASK}" in worker.log()


def test_queue_depth_counts_ready_and_unacked_messages(tmp_path: Path) -> None:
    with make_stack(tmp_path) as own:
        api = own.start_api()
        with api.client(own.create_key("depth")) as client:
            for n in range(3):
                assert (
                    client.post("/v1/fetches", json={"url": f"https://example.com/{n}"}).status_code
                    == 202
                )

        wait_until(
            lambda: own.queue_stats()["fast"]["ready"] == 3,
            30,
            "three ready messages in the fast queue",
            interval=1,
        )
        table = own.run("sous", "queues").stdout
        assert table.splitlines()[0].split() == ["QUEUE", "READY", "UNACKED", "CONSUMERS"]
        assert table.splitlines()[2].split() == ["fast", "3", "0", "0"]


def test_a_message_redelivered_too_often_is_dead_lettered(tmp_path: Path) -> None:
    with make_stack(tmp_path, SOUS_MAX_DELIVERIES="3") as own:
        settings = Settings(broker_url=own.env["SOUS_BROKER_URL"], max_deliveries=3)
        deliveries = 0
        with Connection(settings.broker_url) as connection:
            declare_topology(connection, settings.max_deliveries)
            Producer(connection).publish(
                {"poison": True}, exchange=TASK_EXCHANGE, routing_key="fast", serializer="json"
            )

            def requeue(_body: object, message) -> None:  # type: ignore[no-untyped-def]
                nonlocal deliveries
                deliveries += 1
                message.requeue()  # what RabbitMQ sees when a worker dies before acking

            fast = work_queue("fast", settings.max_deliveries)
            with Consumer(connection, [fast], callbacks=[requeue], accept=["json"]):
                for _ in range(10):
                    try:
                        connection.drain_events(timeout=1)
                    except TimeoutError:
                        break
            dead = dead_letter_queue().bind(connection.default_channel)
            message = wait_until(lambda: dead.get(no_ack=True), 10, "a dead letter")
            assert message.decode() == {"poison": True}
            assert dead.name == DEAD_LETTER_QUEUE
        assert deliveries == 3
