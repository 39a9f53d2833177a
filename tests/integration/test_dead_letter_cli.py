"""``sous dlq``: operators list, replay and purge the messages that kept killing workers."""

from __future__ import annotations

import http.server
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kombu import Connection

from sous_core.queues import dead_letter_queue
from support.stack import LocalHttpServer, Stack, make_stack, wait_for_job, wait_until

pytestmark = pytest.mark.integration


class PoisonOrigin:
    """``/poison`` hangs until ``cure()`` (a worker is killed meanwhile); ``/ok`` answers."""

    def __init__(self) -> None:
        self.cured = threading.Event()
        cured = self.cured

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/poison"):
                    cured.wait(120)
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", "3")
                    self.end_headers()
                    self.wfile.write(b"ok\n")
                except OSError:
                    pass  # The worker that asked was killed while we waited.

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = LocalHttpServer(Handler)
        self.url = self.server.url

    def cure(self) -> None:
        self.cured.set()

    def close(self) -> None:
        self.cured.set()
        self.server.close()


@pytest.fixture
def poison_origin() -> Iterator[PoisonOrigin]:
    origin = PoisonOrigin()
    yield origin
    origin.close()


def dlq(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return stack.run("sous", "dlq", *args, check=False)


def dead_letters(stack: Stack) -> list[dict[str, Any]]:
    listed = stack.run("sous", "dlq", "list", "--json")
    return json.loads(listed.stdout)["dead_letters"]


def attempts_reached(client: httpx.Client, job_ids: list[str], attempts: int) -> bool:
    jobs = [client.get(f"/v1/jobs/{job_id}").json() for job_id in job_ids]
    return all(job["state"] == "running" and job["attempts"] == attempts for job in jobs)


def test_poison_jobs_are_dead_lettered_then_listed_replayed_and_purged(
    tmp_path: Path, poison_origin: PoisonOrigin
) -> None:
    # A redelivered job waits for its dead worker's heartbeat to go stale (3 intervals).
    with make_stack(tmp_path, SOUS_MAX_DELIVERIES="2", SOUS_HEARTBEAT_INTERVAL="1") as own:
        api = own.start_api()
        with api.client(own.create_key("poison")) as client:
            poison = [
                client.post("/v1/fetches", json={"url": f"{poison_origin.url}/poison?{n}"}).json()
                for n in (1, 2)
            ]
            poison_ids = [job["id"] for job in poison]
            for attempt in (1, 2):
                worker = own.start_fast_worker(f"dying-worker-{attempt}")
                wait_until(
                    lambda n=attempt: attempts_reached(client, poison_ids, n),
                    30,
                    f"delivery {attempt} of both poison jobs",
                )
                if attempt == 1:
                    # The pool serves other jobs while poison messages hold some of it.
                    healthy = client.post("/v1/fetches", json={"url": f"{poison_origin.url}/ok"})
                    assert wait_for_job(client, healthy.json()["id"], {"succeeded"})
                worker.kill()  # every delivery of the poison jobs kills their worker

            own.start_fast_worker("survivor")
            for job_id in poison_ids:
                failed = wait_for_job(client, job_id, {"succeeded", "failed"}, timeout=60)
                assert failed["state"] == "failed"
                assert failed["error"]["code"] == "worker_lost"
                assert failed["attempts"] == 2

            # Listing shows both dead letters and consumes neither: a second look sees
            # the same messages in the same order.
            wait_until(lambda: len(dead_letters(own)) == 2, 30, "both dead letters")
            first_look = dead_letters(own)
            assert dead_letters(own) == first_look
            assert {letter["job_id"] for letter in first_look} == set(poison_ids)
            for letter in first_look:
                assert letter["task"] == "sous.fetch"
                assert letter["queue"] == "fast"
                assert letter["reason"] == "delivery_limit"
                assert letter["deliveries"] == 2
                assert letter["died_at"] is not None
            table = own.run("sous", "dlq", "list").stdout
            assert all(job_id in table for job_id in poison_ids)
            assert dead_letters(own) == first_look

            unknown = dlq(own, "replay", "00000000-0000-4000-8000-000000000000")
            assert unknown.returncode == 1
            assert "no dead letter for job" in unknown.stdout
            assert dead_letters(own) == first_look

            # What killed the workers is fixed; the operator replays one of the two jobs.
            poison_origin.cure()
            replayed_id, left_id = poison_ids
            replayed = dlq(own, "replay", replayed_id)
            assert replayed.returncode == 0, replayed.stdout + replayed.stderr
            assert f"replayed {replayed_id} to fast" in replayed.stdout
            done = wait_for_job(client, replayed_id, {"succeeded", "failed"}, timeout=60)
            assert done["state"] == "succeeded"
            assert done["error"] is None
            assert done["attempts"] == 3  # two deaths, then the replayed run
            assert [letter["job_id"] for letter in dead_letters(own)] == [left_id]

            again = dlq(own, "replay", replayed_id)
            assert again.returncode == 1
            assert f"no dead letter for job {replayed_id}" in again.stdout

            purged = dlq(own, "purge", "--yes")
            assert purged.returncode == 0
            assert "purged 1 dead letter(s)" in purged.stdout
            assert dead_letters(own) == []
            assert client.get(f"/v1/jobs/{left_id}").json()["state"] == "failed"


def test_replay_leaves_a_dead_letter_whose_job_is_not_failed(tmp_path: Path) -> None:
    # A dead letter whose job was never marked failed (no worker consumed the copy in
    # dead_letter.jobs yet) must not be replayed: the late copy would fail the rerun.
    with make_stack(tmp_path) as own:
        api = own.start_api()
        with api.client(own.create_key("not-failed")) as client:
            job = client.post("/v1/fetches", json={"url": "http://127.0.0.1:9/never"}).json()
        assert job["state"] == "queued"
        _dead_letter_by_hand(own)

        listed = dead_letters(own)
        assert [letter["job_id"] for letter in listed] == [job["id"]]
        assert listed[0]["reason"] == "rejected"
        assert listed[0]["deliveries"] is None
        left = dlq(own, "replay", "--all")
        assert left.returncode == 1
        assert "the job is queued, not failed" in left.stdout
        assert dead_letters(own) == listed

        assert dlq(own, "purge").returncode == 1  # asks first; no answer means no
        assert dead_letters(own) == listed
        assert "purged 1" in dlq(own, "purge", "--yes").stdout


def _dead_letter_by_hand(stack: Stack) -> None:
    """Reject the job's message without requeue: RabbitMQ dead-letters it (``rejected``)."""
    with Connection(stack.env["SOUS_BROKER_URL"]) as connection:
        channel = connection.default_channel
        dead_letter_queue().bind(channel).declare()  # workers declare it; none ran here
        message = wait_until(lambda: channel.basic_get("fast", no_ack=False), 10, "the message")
        channel.basic_reject(message.delivery_tag, requeue=False)
    wait_until(lambda: len(dead_letters(stack)) == 1, 10, "the dead letter")
