"""The stuck-job reaper: a job whose worker vanished without a redelivery is re-queued once,
then failed the second time."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

import process_commands
from support.stack import Origin, Proc, Stack, make_stack, rabbitmqctl, wait_until

pytestmark = pytest.mark.integration


def running_attempt(client: httpx.Client, job_id: str, attempt: int) -> dict:
    def reached() -> dict | None:
        job = client.get(f"/v1/jobs/{job_id}").json()
        return job if job["state"] == "running" and job["attempts"] == attempt else None

    return wait_until(reached, 40, f"job {job_id} to run attempt {attempt}")


def lose_the_message(stack: Stack, worker: Proc) -> None:
    """Kill the worker and drop the message RabbitMQ would redeliver: the job is orphaned."""
    worker.kill()
    wait_until(lambda: stack.queue_stats()["fast"]["ready"] == 1, 30, "the message to requeue")
    rabbitmqctl("purge_queue", "-p", stack.name, "fast")
    # The management API's counts lag by a few seconds.
    wait_until(lambda: stack.queue_stats()["fast"]["ready"] == 0, 30, "the queue to be empty")


def test_a_silent_job_is_requeued_once_then_failed(tmp_path: Path, origin: Origin) -> None:
    with make_stack(
        tmp_path,
        SOUS_HEARTBEAT_INTERVAL="0.5",
        SOUS_REAPER_INTERVAL="1",
        SOUS_REAPER_SILENCE="fetch=3",
    ) as stack:
        api = stack.start_api()
        with api.client(stack.create_key("reaper")) as client:
            job_id = client.post("/v1/fetches", json={"url": f"{origin.url}/drip/8"}).json()["id"]
            first = stack.start_fast_worker("worker-a")
            running_attempt(client, job_id, 1)
            lose_the_message(stack, first)

            stack.start("scheduler", *process_commands.scheduler())
            second = stack.start_fast_worker("worker-b")
            # The reaper (a maintenance task on worker-b) publishes the job again.
            running_attempt(client, job_id, 2)
            second.wait_for_log(rf"job {job_id} re-queued: its worker sent no heartbeat", 10)
            lose_the_message(stack, second)

            stack.start_fast_worker("worker-c")
            failed = wait_until(
                lambda: (
                    (job := client.get(f"/v1/jobs/{job_id}").json())["state"] != "running" and job
                ),
                40,
                "the reaper to fail the job",
            )
        assert failed["state"] == "failed", failed
        assert failed["error"]["code"] == "stuck"
        assert "re-queued once" in failed["error"]["message"]
        assert failed["attempts"] == 2
