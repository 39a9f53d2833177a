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
