"""Redis down: job state comes from PostgreSQL, submissions and workers go on, limits fail open.

Redis holds only Celery's result backend (which Sous's job tasks do not use: outcomes live
in the job table) and the rate limiter's buckets. With it stopped, the API still answers
job reads, readiness and submissions, workers still run jobs (batches included), and the
rate limiter lets requests through; once it is back, limiting resumes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from chaos.private_services import PrivateRedis, port_open

from support.sinks import SmtpSink
from support.stack import TERMINAL, Origin, make_stack, wait_for_job, wait_until

pytestmark = pytest.mark.integration

#: The main API's limit: every request goes through the limiter, none is refused.
GENEROUS = {"SOUS_RATE_LIMIT_PER_SECOND": "500", "SOUS_RATE_LIMIT_BURST": "1000"}
#: A second replica's limit: two requests, then one token back per 100 s.
STRICT = {"SOUS_RATE_LIMIT_PER_SECOND": "0.01", "SOUS_RATE_LIMIT_BURST": "2"}


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def local_origin() -> Iterator[Origin]:
    server = Origin()
    yield server
    server.close()


@pytest.fixture
def mail_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    yield sink
    sink.close()


def test_with_redis_down_jobs_are_read_submitted_and_run(
    tmp_path: Path, private_redis: PrivateRedis, local_origin: Origin, mail_sink: SmtpSink
) -> None:
    with make_stack(
        tmp_path,
        SOUS_RESULT_BACKEND=private_redis.url,
        SOUS_SMTP_PORT=str(mail_sink.port),
        **GENEROUS,
    ) as stack:
        worker = stack.start_fast_worker()
        api = stack.start_api()
        strict_api = stack.start_api({**stack.env, **STRICT})
        key, limited_key = stack.create_key("redis-down"), stack.create_key("redis-down-limited")
        with api.client(key) as client, strict_api.client(limited_key) as limited:
            # Before: jobs finish, the limiter keeps its buckets in this Redis and refuses.
            before = run_jobs(client, local_origin, "before")
            assert buckets(private_redis), "the rate limiter never used Redis"
            assert [limited.get("/v1/jobs").status_code for _ in range(3)] == [200, 200, 429]
            in_flight = submit(client, "/v1/fetches", {"url": f"{local_origin.url}/delay/3"})
            wait_for_job(client, in_flight, {"running"}, timeout=30)

            private_redis.stop()
            assert not port_open(private_redis.port)

            # Job state is read from the database.
            for job_id, state in before.items():
                job = client.get(f"/v1/jobs/{job_id}")
                assert job.status_code == 200, job.text
                assert job.json()["state"] == state
            assert listed_states(client, set(before)) == before
            # Readiness is the database and the broker; Redis is not part of it.
            ready = client.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}
            # The job that was running when Redis went away finishes.
            assert wait_for_job(client, in_flight, TERMINAL, timeout=60)["state"] == "succeeded"
            # Submissions are accepted and run, batches and retried jobs included.
            during = run_jobs(client, local_origin, "during")
            # The limiter fails open: the tenant it refused before gets through.
            assert limited.get("/v1/jobs").status_code == 200
            assert "rate limiter: Redis did not answer" in strict_api.proc.log()

            private_redis.start()

            after = run_jobs(client, local_origin, "after")
            assert listed_states(client, set(after)) == after
            assert listed_states(client, set(during)) == during
            # Limiting resumes once the limiter tries Redis again (a few seconds later).
            wait_until(
                lambda: limited.get("/v1/jobs").status_code == 429,
                30,
                "the limiter to refuse the strict tenant again",
                interval=0.5,
            )
            assert buckets(private_redis)

        for proc in stack.processes:
            assert proc.popen.poll() is None, f"{proc.label} died:\n{proc.log()}"
        for server in (api, strict_api):
            assert "Traceback" not in server.proc.log(), server.proc.log()
        assert "Traceback" not in worker.log(), worker.log()


def run_jobs(client: httpx.Client, origin: Origin, phase: str) -> dict[str, str]:
    """A fetch, a failing fetch, a fetch retried until it gives up, an email, a batch;
    waits for each to end as it should and returns ``{job id: state}``."""
    expected = {
        submit(client, "/v1/fetches", {"url": f"{origin.url}/ok?{phase}"}): "succeeded",
        submit(client, "/v1/fetches", {"url": f"{origin.url}/status/404?{phase}"}): "failed",
        submit(client, "/v1/fetches", {"url": f"{origin.url}/status/503?{phase}"}): "failed",
        submit(
            client, "/v1/emails", {"to": [f"{phase}@example.com"], "subject": phase, "text": "t"}
        ): "succeeded",
    }
    batch = submit(
        client,
        "/v1/fetches",
        {"urls": [f"{origin.url}/ok?{phase}-1", f"{origin.url}/bytes/10?{phase}-2"]},
    )
    ended = {job_id: wait_for_job(client, job_id, TERMINAL, timeout=60) for job_id in expected}
    assert {job_id: job["state"] for job_id, job in ended.items()} == expected, ended
    retried = next(job for job in ended.values() if "/status/503" in job["params"]["url"])
    assert retried["attempts"] == 3, retried
    done = wait_for_job(client, batch, TERMINAL, timeout=60)
    assert done["state"] == "succeeded", done
    assert (done["result"]["total"], done["result"]["succeeded"]) == (2, 2), done
    return {**expected, batch: "succeeded"}


def submit(client: httpx.Client, path: str, body: dict[str, Any]) -> str:
    response = client.post(path, json=body)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def listed_states(client: httpx.Client, job_ids: set[str]) -> dict[str, str]:
    """The state of each of ``job_ids`` as ``GET /v1/jobs`` lists them (every page)."""
    states: dict[str, str] = {}
    params: dict[str, str] = {"limit": "100"}
    for _ in range(20):
        response = client.get("/v1/jobs", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        states.update({job["id"]: job["state"] for job in page["items"] if job["id"] in job_ids})
        if not page["next_cursor"]:
            break
        params["cursor"] = page["next_cursor"]
    return states


def buckets(server: PrivateRedis) -> list[bytes]:
    """The rate limiter's buckets in ``server``."""
    client = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=2)
    try:
        return list(client.scan_iter("sous:rate:*"))
    finally:
        client.close()
