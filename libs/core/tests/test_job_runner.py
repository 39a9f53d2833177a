"""The job runner when the job database is unreachable as a task starts."""

from __future__ import annotations

import threading
import time
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
    monkeypatch.setattr(job_runner, "LIVE_POLL_SECONDS", 0.1)
    get_settings.cache_clear()


def _keep_beating(job_id: uuid.UUID, stop: threading.Event) -> None:
    from datetime import UTC, datetime

    from sous_core import jobs
    from sous_core.db.engine import session_scope

    while not stop.wait(0.2):
        with session_scope() as session:
            jobs.heartbeat(session, [job_id], datetime.now(UTC))


def test_a_second_message_for_a_live_job_waits_then_is_handed_back(
    heartbeat_every_2s: None,
) -> None:
    job_id = _running_job(heartbeat_age=0)
    stop = threading.Event()
    beating = threading.Thread(target=_keep_beating, args=(job_id, stop))
    beating.start()
    ran: list[uuid.UUID] = []
    task = FakeTask()
    started = time.monotonic()
    try:
        with pytest.raises(Retried):
            job_runner._run_job(task, job_id, lambda context: ran.append(context.job_id) or {})  # type: ignore[arg-type]
    finally:
        stop.set()
        beating.join()
    assert ran == []
    assert _attempts(job_id) == 1
    # Waited a live window and a heartbeat (6 + 2 s) holding the message, then handed it
    # back to be looked at again a live window later, without a retry limit.
    assert time.monotonic() - started >= 8
    assert task.retry_options == {"countdown": 6, "max_retries": job_runner.START_RETRY_LIMIT}


def test_a_dead_workers_job_is_taken_over_by_the_same_message(heartbeat_every_2s: None) -> None:
    # Redelivered right after its worker died: the last heartbeat is still fresh. The
    # message waits for it to go stale and runs the job, rather than publishing a new
    # message (which would reset the broker's count of deliveries of a poison message).
    job_id = _running_job(heartbeat_age=5)
    ran: list[int] = []
    task = FakeTask()
    job_runner._run_job(task, job_id, lambda context: ran.append(context.attempt) or {})  # type: ignore[arg-type]
    assert ran == [2]
    assert task.retry_options == {}


def test_a_job_whose_heartbeat_stopped_is_taken_over(heartbeat_every_2s: None) -> None:
    job_id = _running_job(heartbeat_age=7)
    ran: list[int] = []
    job_runner._run_job(FakeTask(), job_id, lambda context: ran.append(context.attempt) or {})  # type: ignore[arg-type]
    assert ran == [2]


def test_a_message_for_a_job_this_process_is_running_waits_for_it(
    heartbeat_every_2s: None,
) -> None:
    from sous_core import cancel_watch

    job_id = _running_job(heartbeat_age=3600)  # even with a stale heartbeat
    cancel_watch.WATCH._flags[job_id] = False
    finished = threading.Timer(0.5, cancel_watch.WATCH.forget, args=(job_id,))
    finished.start()
    ran: list[int] = []
    try:
        job_runner._run_job(FakeTask(), job_id, lambda context: ran.append(context.attempt) or {})  # type: ignore[arg-type]
    finally:
        finished.join()
        cancel_watch.WATCH.forget(job_id)
    assert ran == [2]  # only once this process's attempt had ended


class ClosingServer:
    """A TCP server that accepts and at once closes every connection, counting them."""

    def __init__(self) -> None:
        import socket

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


def test_progress_during_a_database_outage_is_skipped_and_the_work_goes_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from sous_core.db.engine import dispose_engine
    from sous_core.settings import get_settings

    server = ClosingServer()
    monkeypatch.setenv(
        "SOUS_DATABASE_URL", f"postgresql+psycopg://postgres@127.0.0.1:{server.port}/sous"
    )
    get_settings.cache_clear()
    dispose_engine()
    try:
        context = job_runner.JobContext(job_id=uuid.uuid4(), kind="transcode", params={}, attempt=1)
        context.set_progress(10, eta_seconds=30)  # does not raise: the work goes on
        assert server.connections == 1
        assert "progress 10% not recorded, the database is unreachable" in caplog.text
        # Within the pause, updates are skipped without waiting on the database again.
        context.set_progress(20)
        context.set_progress(30)
        assert server.connections == 1
        assert "progress 20%" not in caplog.text
        # Once the pause is over, the next update tries again.
        context._progress_resumes_at = time.monotonic() - 1
        context.set_progress(40)
        assert server.connections == 2
        assert "progress 40% not recorded" in caplog.text
    finally:
        server.close()
        dispose_engine()
        get_settings.cache_clear()


def test_progress_is_recorded_while_the_database_answers(heartbeat_every_2s: None) -> None:
    from sous_core import jobs
    from sous_core.db.engine import session_scope

    job_id = _running_job(heartbeat_age=0)
    context = job_runner.JobContext(job_id=job_id, kind="email", params={}, attempt=1)
    context.set_progress(55.7, eta_seconds=12)
    with session_scope() as session:
        job = jobs.get_job(session, job_id)
        assert job.progress == 55
        assert job.eta_at is not None
