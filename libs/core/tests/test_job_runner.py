"""The job runner when the job database is unreachable as a task starts."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from sous_core import job_runner


class Retried(Exception):
    pass


class FakeTask:
    def __init__(self) -> None:
        self.request = SimpleNamespace(retries=3, delivery_info={"redelivered": False})
        self.retry_options: dict[str, Any] = {}

    def retry(self, **options: Any) -> Retried:
        self.retry_options = options
        return Retried()


def test_a_job_whose_start_cannot_be_recorded_is_retried_not_acknowledged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def database_down(job_id: uuid.UUID, redelivered: bool = False) -> None:
        raise OperationalError("UPDATE jobs", {}, ConnectionRefusedError("refused"))

    def work(context: job_runner.JobContext) -> dict[str, Any]:
        raise AssertionError("the work must not run")

    monkeypatch.setattr(job_runner, "_start", database_down)
    task = FakeTask()
    with pytest.raises(Retried):
        job_runner._run_job(task, uuid.uuid4(), work)  # type: ignore[arg-type]
    # Acknowledging the message would leave the job queued forever: retry without a limit.
    assert task.retry_options["max_retries"] == job_runner.START_RETRY_LIMIT
    assert task.retry_options["countdown"] >= 1


def _running_job(heartbeat_age: float) -> uuid.UUID:
    from datetime import UTC, datetime, timedelta

    from sous_core import apikeys, jobs
    from sous_core.db.engine import session_scope
    from sous_core.db.models import Job
    from sous_core.states import JobState

    with session_scope() as session:
        tenant, _ = apikeys.get_or_create_tenant(session, "acme")
        job = Job(tenant_id=tenant.id, kind="email", params={})
        session.add(job)
        session.flush()
        jobs.transition(session, job.id, JobState.QUEUED)
        jobs.transition(session, job.id, JobState.RUNNING)
        beat = datetime.now(UTC) - timedelta(seconds=heartbeat_age)
        jobs.heartbeat(session, [job.id], beat)
        return job.id


def _attempts(job_id: uuid.UUID) -> int:
    from sous_core import jobs
    from sous_core.db.engine import session_scope

    with session_scope() as session:
        return jobs.get_job(session, job_id).attempts


@pytest.fixture
def heartbeat_every_2s(configured_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The process-wide database, with a heartbeat every 2 s (alive within 6 s)."""
    from sous_core.settings import get_settings

    monkeypatch.setenv("SOUS_HEARTBEAT_INTERVAL", "2")
    get_settings.cache_clear()


def test_a_second_message_for_a_live_job_waits_instead_of_running_it(
    heartbeat_every_2s: None,
) -> None:
    job_id = _running_job(heartbeat_age=1)
    ran: list[uuid.UUID] = []
    task = FakeTask()
    with pytest.raises(Retried):
        job_runner._run_job(task, job_id, lambda context: ran.append(context.job_id) or {})  # type: ignore[arg-type]
    assert ran == []
    assert _attempts(job_id) == 1
    # Looked at again once a live attempt would have heartbeated (3 intervals), forever.
    assert task.retry_options == {"countdown": 6, "max_retries": job_runner.START_RETRY_LIMIT}


def test_a_job_whose_heartbeat_stopped_is_taken_over(heartbeat_every_2s: None) -> None:
    job_id = _running_job(heartbeat_age=7)
    ran: list[int] = []
    job_runner._run_job(FakeTask(), job_id, lambda context: ran.append(context.attempt) or {})  # type: ignore[arg-type]
    assert ran == [2]


def test_a_message_for_a_job_this_process_is_running_waits(configured_db: str) -> None:
    from sous_core import cancel_watch

    job_id = _running_job(heartbeat_age=3600)  # even with a stale heartbeat
    cancel_watch.WATCH._flags[job_id] = False
    try:
        task = FakeTask()
        with pytest.raises(Retried):
            job_runner._run_job(task, job_id, lambda context: {})  # type: ignore[arg-type]
    finally:
        cancel_watch.WATCH.forget(job_id)
    assert _attempts(job_id) == 1
