"""No accepted job is lost: broker outages answer 503 cleanly, dead workers mean redelivery."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from support.stack import (
    OK_SHA256,
    Origin,
    Stack,
    free_port,
    make_stack,
    wait_for_job,
    wait_until,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def silent_broker() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a hung broker)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(5)
    for conn in accepted:
        conn.close()
    listener.close()


@pytest.mark.parametrize("keyed", [True, False], ids=["single", "batched"])
@pytest.mark.parametrize("outage", ["refused", "hung"])
def test_broker_outage_answers_503_fast_and_records_the_failure(
    stack: Stack, outage: str, keyed: bool, silent_broker: int
) -> None:
    # With an Idempotency-Key a job is submitted on its own, without one in a batch.
    headers = {"Idempotency-Key": "retry-me"} if keyed else {}
    port = free_port() if outage == "refused" else silent_broker
    env = {**stack.env, "SOUS_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{port}//"}
    api = stack.start_api(env)
    key = stack.create_key(f"outage-{outage}-{'single' if keyed else 'batched'}")
    with api.client(key) as client:
        started = time.monotonic()
        response = client.post("/v1/fetches", json={"url": "https://example.com/"}, headers=headers)
        elapsed = time.monotonic() - started

        assert response.status_code == 503
        assert response.json()["error"]["code"] == "broker_unavailable"
        assert response.headers["retry-after"] == "5"
        assert elapsed < 2.0, f"503 took {elapsed:.2f}s"
        # Nothing half-written: the row exists and says why it never ran.
        jobs = client.get("/v1/jobs").json()["items"]
        assert len(jobs) == 1
        assert jobs[0]["state"] == "failed"
        assert jobs[0]["error"]["code"] == "broker_unavailable"
        # The key was freed: retrying makes a fresh attempt rather than replaying the 503.
        retry = client.post("/v1/fetches", json={"url": "https://example.com/"}, headers=headers)
        assert retry.status_code == 503
        assert len(client.get("/v1/jobs").json()["items"]) == 2
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"] == "ok"
        assert ready.json()["checks"]["broker"].startswith("unreachable")
    api.proc.stop()


def test_concurrent_submissions_to_a_hung_broker_are_each_refused_fast(
    stack: Stack, silent_broker: int
) -> None:
    env = {**stack.env, "SOUS_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{silent_broker}//"}
    api = stack.start_api(env)
    key = stack.create_key("outage-concurrent")

    def submit(n: int) -> tuple[httpx.Response, float]:
        with api.client(key) as client:
            started = time.monotonic()
            response = client.post("/v1/fetches", json={"url": f"https://example.com/{n}"})
            return response, time.monotonic() - started

    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(submit, range(12)))
    for response, elapsed in answers:
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "broker_unavailable"
        assert response.headers["retry-after"] == "5"
        # A request that waited behind a failing batch is refused with it, not after
        # another timeout of its own.
        assert elapsed < 2.0, f"503 took {elapsed:.2f}s"
    with api.client(key) as client:
        jobs = client.get("/v1/jobs", params={"limit": 100}).json()["items"]
    # Nothing half-written: every job that was written says why it never ran.
    assert 1 <= len(jobs) <= 12
    assert {job["state"] for job in jobs} == {"failed"}
    assert {job["error"]["code"] for job in jobs} == {"broker_unavailable"}
    api.proc.stop()


def test_readyz_is_ok_when_database_and_broker_answer(stack: Stack) -> None:
    api = stack.start_api()
    with api.client() as client:
        ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"database": "ok", "broker": "ok"}}
    api.proc.stop()


def test_worker_killed_mid_task_redelivers_and_the_job_finishes(
    tmp_path: Path, origin: Origin
) -> None:
    # The redelivered job waits for the dead worker's heartbeat to go stale (3 intervals).
    with make_stack(tmp_path, SOUS_HEARTBEAT_INTERVAL="1") as own:
        api = own.start_api()
        worker = own.start_fast_worker("doomed-worker")
        with api.client(own.create_key("kill")) as client:
            job = client.post("/v1/fetches", json={"url": f"{origin.url}/drip/4"}).json()
            running = wait_for_job(client, job["id"], {"running"})
            assert running["attempts"] == 1

            worker.kill()  # SIGKILL: no chance to ack, requeue or clean up
            assert client.get(f"/v1/jobs/{job['id']}").json()["state"] == "running"
            own.start_fast_worker("replacement-worker")

            done = wait_for_job(client, job["id"], {"succeeded", "failed"}, timeout=60)
        assert done["state"] == "succeeded"
        assert done["attempts"] == 2
        assert done["result"]["size_bytes"] == 200


def test_cancelled_queued_job_never_runs(tmp_path: Path, origin: Origin) -> None:
    with make_stack(tmp_path) as own:
        api = own.start_api()
        with api.client(own.create_key("cancel")) as client:
            job = client.post("/v1/fetches", json={"url": f"{origin.url}/ok?cancel"}).json()
            assert job["state"] == "queued"
            kept = client.post("/v1/fetches", json={"url": f"{origin.url}/ok"}).json()

            cancelled = client.post(f"/v1/jobs/{job['id']}/cancel")
            assert cancelled.status_code == 202
            assert cancelled.json()["state"] == "cancelled"

            own.start_fast_worker()
            done = wait_for_job(client, kept["id"], {"succeeded", "failed"})
            assert done["result"]["sha256"] == OK_SHA256
            final = client.get(f"/v1/jobs/{job['id']}").json()
        assert final["state"] == "cancelled"
        assert final["attempts"] == 0
        assert origin.hits["/ok?cancel"] == 0

        def fast_queue_drained() -> bool:
            # The management API refreshes its numbers every few seconds.
            fast = own.queue_stats()["fast"]
            return fast["ready"] == 0 and fast["unacked"] == 0 and fast["consumers"] == 1

        wait_until(fast_queue_drained, 30, "the fast queue to drain", interval=1)


def test_a_job_whose_worker_keeps_dying_is_dead_lettered_and_failed(
    tmp_path: Path, origin: Origin
) -> None:
    with make_stack(tmp_path, SOUS_MAX_DELIVERIES="2", SOUS_HEARTBEAT_INTERVAL="1") as own:
        api = own.start_api()
        with api.client(own.create_key("poison")) as client:
            job = client.post("/v1/fetches", json={"url": f"{origin.url}/drip/30"}).json()
            for attempt in (1, 2):
                worker = own.start_fast_worker(f"dying-worker-{attempt}")
                running = wait_for_job(client, job["id"], {"running"})
                wait_until(
                    lambda n=attempt: client.get(f"/v1/jobs/{job['id']}").json()["attempts"] == n,
                    30,
                    f"delivery {attempt}",
                )
                worker.kill()
            assert running["state"] == "running"

            own.start_fast_worker("survivor")
            done = wait_for_job(client, job["id"], {"succeeded", "failed"}, timeout=60)
            assert done["state"] == "failed"
            assert done["error"]["code"] == "worker_lost"
            assert "dead-letter" in done["error"]["message"]
            assert "delivered 2 times" in done["error"]["message"]
            assert done["attempts"] == 2
            healthy = client.post("/v1/fetches", json={"url": f"{origin.url}/ok"}).json()
            assert wait_for_job(client, healthy["id"], {"succeeded"})["attempts"] == 1

        def parked_for_operators() -> bool:
            queues = own.queue_stats()
            return queues["dead_letter"]["ready"] == 1 and queues["fast"]["ready"] == 0

        wait_until(parked_for_operators, 30, "the dead letter to be parked", interval=1)


def test_many_concurrent_requests_on_a_small_pool_do_not_deadlock(
    tmp_path: Path, origin: Origin
) -> None:
    # More requests than request threads than connections: each finished request's
    # session must be closed without waiting for a request thread.
    with make_stack(tmp_path, SOUS_DATABASE_POOL_SIZE="2") as own:
        api = own.start_api()
        key = own.create_key("crowd")
        with api.client(key) as client:
            job_id = client.post("/v1/fetches", json={"url": f"{origin.url}/ok"}).json()["id"]

        def hit(n: int) -> int:
            with api.client(key) as c:
                if n % 3 == 0:
                    return c.post("/v1/fetches", json={"url": f"{origin.url}/ok?{n}"}).status_code
                path = f"/v1/jobs/{job_id}" if n % 3 == 1 else "/v1/jobs?limit=5"
                return c.get(path).status_code

        with ThreadPoolExecutor(max_workers=40) as pool:
            statuses = list(pool.map(hit, range(200)))
        assert sorted(set(statuses)) == [200, 202]
