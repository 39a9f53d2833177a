"""PostgreSQL down as a job's work ends: the worker waits to record the outcome, and does not
acknowledge work it could not record.

Each test runs its own PostgreSQL (``chaos.private_services``), stops it while a real fast
worker is in the middle of a job, and starts it again; RabbitMQ and Redis are the shared ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from chaos.private_services import PrivatePostgres

from support.sinks import SmtpSink
from support.stack import OK_SHA256, TERMINAL, Origin, Proc, make_stack, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

#: Seconds the origin (or the SMTP sink) takes to answer: PostgreSQL is stopped meanwhile.
WORK_SECONDS = 3.0


@pytest.fixture
def postgres() -> Iterator[PrivatePostgres]:
    """A private PostgreSQL, in a folder the ``postgres`` user can reach."""
    folder = Path(tempfile.mkdtemp(prefix="sous-outcome-outage-"))
    folder.chmod(0o711)
    server = PrivatePostgres(folder / "postgres")
    try:
        server.prepare()
        server.start()
        server.create_database()
        yield server
    finally:
        try:
            server.stop()
        except AssertionError:
            server.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)


class SlowSmtpSink(SmtpSink):
    """An SMTP sink that takes ``delay`` seconds to accept a message's data."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.in_data = threading.Event()
        super().__init__()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.in_data.set()
        await asyncio.sleep(self.delay)
        return await super().handle_DATA(server, session, envelope)


def failed_attempts(worker: Proc, job_id: str, what: str) -> int:
    """How many times the worker logged it could not record ``what`` of the job."""
    pattern = rf"job {job_id}: {re.escape(what)}: the job database is unreachable .*attempt \d+"
    return len(re.findall(pattern, worker.log()))


def task_ended(worker: Proc, job_id: str) -> bool:
    """Whether the worker is done with the job's (first) message, whichever way."""
    pattern = rf"Task sous\.\w+\[{job_id}\] (succeeded|raised|retry)"
    return re.search(pattern, worker.log()) is not None


def wait_while_recording(worker: Proc, job_id: str, what: str, attempts: int = 3) -> None:
    """Wait until the worker has failed ``attempts`` times to record ``what``, or has given
    up on the task (a worker that does not wait for the database does so at once)."""
    wait_until(
        lambda: failed_attempts(worker, job_id, what) >= attempts or task_ended(worker, job_id),
        90,
        f"the worker to retry {what} of job {job_id}",
    )


def settled(client: httpx.Client, job_id: str, timeout: float = 120) -> dict[str, Any]:
    """The job once it has ended; the API answers 503 while its database reconnects."""

    def ended() -> dict[str, Any] | None:
        with contextlib.suppress(httpx.HTTPError):
            response = client.get(f"/v1/jobs/{job_id}")
            if response.status_code == 200 and response.json()["state"] in TERMINAL:
                return response.json()
        return None

    return wait_until(ended, timeout, f"job {job_id} to end", interval=0.5)


def test_an_outcome_reached_while_postgres_is_down_is_recorded_when_it_returns(
    tmp_path: Path, postgres: PrivatePostgres, origin: Origin
) -> None:
    with make_stack(tmp_path, SOUS_DATABASE_URL=postgres.url) as stack:
        worker = stack.start_fast_worker(concurrency=4)
        api = stack.start_api()
        path = f"/delay/{WORK_SECONDS}?outage={secrets.token_hex(4)}"
        with api.client(stack.create_key("outage")) as client:
            job_id = client.post("/v1/fetches", json={"url": f"{origin.url}{path}"}).json()["id"]
            wait_until(lambda: origin.hits[path] == 1, 60, "the fetch to reach the origin")
            postgres.stop()
            # The work ends while PostgreSQL is down; stay down a few attempts longer.
            wait_while_recording(worker, job_id, "recording state succeeded")
            postgres.start()
            job = settled(client, job_id)

        assert job["state"] == "succeeded", job
        assert job["result"]["status_code"] == 200
        assert job["result"]["sha256"] == OK_SHA256
        # Recorded by the run that did the work: not redelivered, not fetched again.
        assert job["attempts"] == 1
        assert origin.hits[path] == 1
        assert worker.popen.poll() is None, worker.log()
        assert failed_attempts(worker, job_id, "recording state succeeded") >= 3
        assert "publishing the task again" not in worker.log()


def test_an_outcome_not_recorded_within_the_patience_is_requeued_not_dead_lettered(
    tmp_path: Path, postgres: PrivatePostgres, origin: Origin
) -> None:
    with make_stack(
        tmp_path,
        SOUS_DATABASE_URL=postgres.url,
        SOUS_OUTCOME_WRITE_PATIENCE_SECONDS="2",
        # No returned delivery allowed: a requeued message would be dead-lettered at once.
        SOUS_MAX_DELIVERIES="1",
        SOUS_RETRY_BACKOFF="1",
        SOUS_RETRY_BACKOFF_MAX="2",
    ) as stack:
        worker = stack.start_fast_worker(concurrency=4)
        api = stack.start_api()
        path = f"/delay/{WORK_SECONDS}?patience={secrets.token_hex(4)}"
        with api.client(stack.create_key("patience")) as client:
            job_id = client.post("/v1/fetches", json={"url": f"{origin.url}{path}"}).json()["id"]
            wait_until(lambda: origin.hits[path] == 1, 60, "the fetch to reach the origin")
            postgres.stop()

            def back_or_gone() -> bool:
                log = worker.log()
                return (
                    f"job {job_id} not started: the job database is unreachable" in log
                    or re.search(rf"Task sous\.fetch\[{job_id}\] raised", log) is not None
                    or stack.queue_stats()["dead_letter"]["ready"] > 0
                )

            # Down until the task came back and could not start (or was given up on).
            wait_until(back_or_gone, 90, "the task to come back while PostgreSQL is down", 1.0)
            postgres.start()
            job = settled(client, job_id)
            stats = stack.queue_stats()

        assert job["state"] == "succeeded", job
        assert job["result"]["sha256"] == OK_SHA256
        # Redelivered once, and the work redone once: nothing lost, nothing dead-lettered.
        assert job["attempts"] == 2
        assert origin.hits[path] == 2
        assert stats["dead_letter"]["ready"] == 0, stats
        assert "dead-lettered" not in worker.log()
        assert worker.popen.poll() is None, worker.log()
        gave_up = rf"job {job_id}: recording state succeeded: gave up after .*patience ran out"
        assert re.search(gave_up, worker.log())


def test_an_email_sent_while_postgres_is_down_is_sent_once_and_recorded(
    tmp_path: Path, postgres: PrivatePostgres
) -> None:
    sink = SlowSmtpSink(delay=WORK_SECONDS)
    try:
        with make_stack(
            tmp_path, SOUS_DATABASE_URL=postgres.url, SOUS_SMTP_PORT=str(sink.port)
        ) as stack:
            worker = stack.start_fast_worker(concurrency=4)
            api = stack.start_api()
            to = f"outage-{secrets.token_hex(4)}@example.com"
            with api.client(stack.create_key("email-outage")) as client:
                email = {"to": [to], "subject": "during an outage", "text": "once"}
                job_id = client.post("/v1/emails", json=email).json()["id"]
                assert sink.in_data.wait(60), "the email never reached the SMTP sink"
                postgres.stop()
                # The server accepts the mail while the database is down; its checkpoint waits.
                wait_while_recording(worker, job_id, "recording a checkpoint")
                postgres.start()
                job = settled(client, job_id)
            assert worker.popen.poll() is None, worker.log()
            assert failed_attempts(worker, job_id, "recording a checkpoint") >= 3
    finally:
        sink.close()

    assert job["state"] == "succeeded", job
    assert job["result"]["smtp_completed"] is True
    assert job["attempts"] == 1
    assert len(sink.to(to)) == 1
    assert sink.attempts[to] == 1


def test_a_worker_told_to_stop_while_it_waits_hands_the_job_back_and_exits(
    tmp_path: Path, postgres: PrivatePostgres, origin: Origin
) -> None:
    with make_stack(
        tmp_path,
        SOUS_DATABASE_URL=postgres.url,
        # Far longer than the test waits for the worker to exit.
        SOUS_OUTCOME_WRITE_PATIENCE_SECONDS="3600",
        SOUS_MAX_DELIVERIES="1",
        SOUS_RETRY_BACKOFF="1",
        SOUS_RETRY_BACKOFF_MAX="2",
    ) as stack:
        worker = stack.start_fast_worker(label="worker-fast-stopping", concurrency=4)
        api = stack.start_api()
        path = f"/delay/{WORK_SECONDS}?shutdown={secrets.token_hex(4)}"
        with api.client(stack.create_key("shutdown")) as client:
            job_id = client.post("/v1/fetches", json={"url": f"{origin.url}{path}"}).json()["id"]
            wait_until(lambda: origin.hits[path] == 1, 60, "the fetch to reach the origin")
            postgres.stop()
            wait_while_recording(worker, job_id, "recording state succeeded", attempts=2)
            # A rollout's SIGTERM: warm shutdown; killed if still running after 120 s.
            worker.stop(timeout=120)
            postgres.start()
            successor = stack.start_fast_worker(label="worker-fast-successor", concurrency=4)
            job = settled(client, job_id)
            stats = stack.queue_stats()

        assert worker.popen.returncode == 0, worker.log()
        gave_up = (
            rf"job {job_id}: recording state succeeded: gave up after .*the worker is shutting "
            r"down\); publishing the task again"
        )
        assert re.search(gave_up, worker.log()), worker.log()
        assert job["state"] == "succeeded", job
        assert job["attempts"] == 2
        assert origin.hits[path] == 2
        assert stats["dead_letter"]["ready"] == 0, stats
        assert successor.popen.poll() is None, successor.log()
