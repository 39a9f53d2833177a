"""The job runner when the job database is unreachable as the work ends.

A real engine against a PostgreSQL port nothing listens on: every write is refused,
as while PostgreSQL restarts. Integration tests cover the database coming back.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from sous_core import job_runner
from sous_core.db.engine import dispose_engine
from sous_core.errors import PermanentJobError, TransientJobError
from sous_core.settings import get_settings


class Retried(Exception):
    pass


class FakeTask:
    """What the runner uses of a bound Celery task: its request and ``retry``."""

    def __init__(self, retries: int = 0) -> None:
        self.request = SimpleNamespace(retries=retries, delivery_info={"redelivered": False})
        self.retry_options: dict[str, Any] = {}

    def retry(self, **options: Any) -> Retried:
        self.retry_options = options
        return Retried()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def database_down(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/sous"
    monkeypatch.setenv("SOUS_DATABASE_URL", url)
    monkeypatch.setenv("SOUS_OUTCOME_WRITE_PATIENCE_SECONDS", "0.6")
    monkeypatch.setenv("SOUS_MAX_RETRIES", "3")
    get_settings.cache_clear()
    dispose_engine()
    yield
    dispose_engine()
    get_settings.cache_clear()


def context() -> job_runner.JobContext:
    return job_runner.JobContext(job_id=uuid.uuid4(), kind="fetch", params={}, attempt=1)


def test_an_outcome_that_cannot_be_recorded_publishes_the_task_again(
    database_down: None, caplog: pytest.LogCaptureFixture
) -> None:
    task = FakeTask()
    job = context()
    with pytest.raises(Retried):
        job_runner._run_work(task, job, lambda _: {"status_code": 200})
    # Not acknowledged as done: the message is replaced by a new one, without a limit.
    assert task.retry_options["max_retries"] == job_runner.START_RETRY_LIMIT
    assert task.retry_options["countdown"] >= 1
    waits = [r for r in caplog.records if "next in" in r.getMessage()]
    assert waits, "each failed attempt is logged"
    assert all(str(job.job_id) in r.getMessage() for r in waits)
    assert all(r.levelname == "WARNING" for r in waits)
    assert all(r.exc_info is None for r in waits)
    gave_up = [r for r in caplog.records if "publishing the task again" in r.getMessage()]
    assert len(gave_up) == 1
    assert "patience ran out" in gave_up[0].getMessage()


def test_a_failure_that_cannot_be_recorded_publishes_the_task_again(database_down: None) -> None:
    def broken(_: job_runner.JobContext) -> dict[str, Any]:
        raise PermanentJobError("http_404", "Not found.")

    task = FakeTask()
    with pytest.raises(Retried):
        job_runner._run_work(task, context(), broken)
    assert task.retry_options["max_retries"] == job_runner.START_RETRY_LIMIT


def test_a_transient_failure_is_retried_even_if_retrying_cannot_be_recorded(
    database_down: None,
) -> None:
    def flaky(_: job_runner.JobContext) -> dict[str, Any]:
        raise TransientJobError("http_503", "Service unavailable.")

    task = FakeTask(retries=1)
    with pytest.raises(Retried):
        job_runner._run_work(task, context(), flaky)
    # The ordinary, bounded retry of a transient failure.
    assert task.retry_options["max_retries"] == 3


def test_a_stopping_worker_stops_waiting_for_the_database(
    database_down: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SOUS_OUTCOME_WRITE_PATIENCE_SECONDS", "3600")
    get_settings.cache_clear()
    # Celery's warm shutdown sets the flag to the exit code, 0.
    monkeypatch.setattr(job_runner.worker_state, "should_stop", 0)
    task = FakeTask()
    with pytest.raises(Retried):
        job_runner._run_work(task, context(), lambda _: {"ok": True})
    assert task.retry_options["max_retries"] == job_runner.START_RETRY_LIMIT
    # Gave up after the one attempt, not an hour of them.
    assert not [r for r in caplog.records if "next in" in r.getMessage()]
    assert "shutting down" in caplog.text


def test_the_worker_is_stopping_only_once_celery_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(job_runner.worker_state, "should_stop", None)
    monkeypatch.setattr(job_runner.worker_state, "should_terminate", None)
    assert not job_runner._worker_stopping()
    monkeypatch.setattr(job_runner.worker_state, "should_terminate", 1)
    assert job_runner._worker_stopping()


def test_a_checkpoint_waits_for_the_database_even_through_a_shutdown_then_fails_the_job(
    database_down: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Giving up early would not save the email: a redelivery would send it again.
    monkeypatch.setattr(job_runner.worker_state, "should_stop", 0)
    job = context()
    with pytest.raises(PermanentJobError) as raised:
        job.checkpoint({"smtp_completed": True})
    assert raised.value.code == "checkpoint_failed"
    assert job.result is None
    waits = [r for r in caplog.records if "recording a checkpoint" in r.getMessage()]
    assert any("next in" in r.getMessage() for r in waits)
    assert "patience ran out" in caplog.text
