"""An email whose earlier attempt was cut off between handing it over and the server's
answer is not sent again: the later attempt waits for the earlier one's record, and
without one it fails as ``delivery_uncertain`` (a real SMTP sink, a real SQLite database)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sous_core import apikeys, jobs
from sous_core.db.engine import dispose_engine, session_scope
from sous_core.db.migrate import upgrade
from sous_core.db.models import Job
from sous_core.errors import AttemptSuperseded, PermanentJobError
from sous_core.job_runner import JobContext
from sous_core.settings import get_settings
from sous_core.states import JobState
from sous_worker_fast import email_jobs
from support.sinks import SmtpSink

SMTP_TIMEOUT = 1.0


@pytest.fixture
def sink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SmtpSink]:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    smtp = SmtpSink()
    monkeypatch.setenv("SOUS_DATABASE_URL", url)
    monkeypatch.setenv("SOUS_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("SOUS_SMTP_PORT", str(smtp.port))
    monkeypatch.setenv("SOUS_SMTP_TIMEOUT", str(SMTP_TIMEOUT))
    get_settings.cache_clear()
    dispose_engine()
    yield smtp
    smtp.close()
    dispose_engine()
    get_settings.cache_clear()


def running_email(result: dict[str, Any]) -> JobContext:
    params = {"to": ["ada@example.com"], "subject": "Hello", "text": "Hi"}
    with session_scope() as session:
        tenant, _ = apikeys.get_or_create_tenant(session, "acme")
        job = Job(tenant_id=tenant.id, kind="email", params=params)
        session.add(job)
        session.flush()
        jobs.transition(session, job.id, JobState.QUEUED)
        jobs.transition(session, job.id, JobState.RUNNING)
        jobs.record_result(session, job.id, result)
        job_id = job.id
    return JobContext(job_id=job_id, kind="email", params=params, attempt=1, result=result)


def in_doubt(seconds_ago: float) -> dict[str, Any]:
    handed = datetime.now(UTC) - timedelta(seconds=seconds_ago)
    return {
        "smtp_in_doubt": True,
        "message_id": "<m1@example.org>",
        "handed_over_at": handed.isoformat(),
    }


def test_no_word_from_the_earlier_attempt_fails_without_sending(sink: SmtpSink) -> None:
    context = running_email(in_doubt(seconds_ago=SMTP_TIMEOUT + email_jobs.IN_DOUBT_MARGIN + 1))

    with pytest.raises(PermanentJobError) as caught:
        email_jobs.run_email(context)

    assert caught.value.code == "delivery_uncertain"
    assert "<m1@example.org>" in caught.value.message
    assert sink.messages == []


def test_the_earlier_attempts_record_is_waited_for_and_used(sink: SmtpSink) -> None:
    context = running_email(in_doubt(seconds_ago=0))
    sent = {
        "smtp_completed": True,
        "message_id": "<m1@example.org>",
        "accepted": ["ada@example.com"],
    }

    def earlier_attempt_finishes() -> None:
        with session_scope() as session:
            jobs.record_result(session, context.job_id, sent)

    timer = threading.Timer(1.0, earlier_attempt_finishes)
    timer.start()
    try:
        result = email_jobs.run_email(context)
    finally:
        timer.join()

    assert result == sent
    assert sink.messages == []


def test_a_refusal_after_the_hand_over_lets_the_retry_send(sink: SmtpSink) -> None:
    context = running_email({"smtp_in_doubt": False, "smtp_reply": "451 4.3.0 later"})

    result = email_jobs.run_email(context)

    assert result["smtp_completed"] is True
    assert len(sink.messages) == 1
    with session_scope() as session:
        assert jobs.state_and_result(session, context.job_id)[1] == result


def test_a_send_records_its_hand_over_then_its_completion(sink: SmtpSink) -> None:
    context = running_email({})
    context.result = None
    seen: list[dict[str, Any]] = []
    record = context.checkpoint

    def spy(result: dict[str, Any], *, claim: bool = False) -> None:
        seen.append({**result, "claimed": claim})
        record(result, claim=claim)

    context.checkpoint = spy  # type: ignore[method-assign]
    email_jobs.run_email(context)

    assert [(mark.get("smtp_in_doubt"), mark["claimed"]) for mark in seen] == [
        (True, True),
        (None, False),
    ]
    assert seen[1]["smtp_completed"] is True
    assert len(sink.messages) == 1
    assert uuid.UUID(str(sink.messages[0].message["X-Sous-Job-Id"])) == context.job_id


def test_an_attempt_taken_over_does_not_end_its_message(sink: SmtpSink) -> None:
    # A worker frozen mid-send: the reaper re-queued its job and a later attempt (here
    # attempt 2) owns it; when the frozen attempt 1 resumes it must not send.
    context = running_email({})
    context.result = None
    context.attempt = 0  # the row says attempt 1 started it; this is an older attempt

    with pytest.raises(AttemptSuperseded):
        email_jobs.run_email(context)

    assert sink.messages == []
    with session_scope() as session:
        assert jobs.state_and_result(session, context.job_id)[1] == {}
