"""Worker side of a job: load the row, run the work, record the outcome, retry or fail.

Every job task goes through ``register_job_task`` so redelivery, cancellation,
transient/permanent errors and bad payloads are handled the same way everywhere.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NoReturn, TypeVar

from celery import Celery, Task
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from sous_core import cancel_watch, jobs, telemetry
from sous_core.celery_metrics import JOB_FAILED_ATTRIBUTE
from sous_core.db.engine import session_scope
from sous_core.db.models import utcnow
from sous_core.errors import JobCancelled, JobError, PermanentJobError, TransientJobError
from sous_core.logs import job_context
from sous_core.settings import get_settings
from sous_core.states import IllegalTransition, JobState
from sous_core.tasks import JobPayload

logger = logging.getLogger("sous.jobs")

_Params = TypeVar("_Params", bound=BaseModel)


@dataclass
class JobContext:
    """What the work function of a job sees: its id, parameters and a way to report."""

    job_id: uuid.UUID
    kind: str
    params: dict[str, Any]
    attempt: int
    #: What an earlier attempt recorded with :meth:`checkpoint` (``None`` on a first run).
    result: dict[str, Any] | None = None

    def params_as(self, model: type[_Params]) -> _Params:
        """The job's parameters as ``model``; invalid ones fail the job for good."""
        try:
            return model.model_validate(self.params)
        except ValidationError as exc:
            raise PermanentJobError(
                "invalid_params", f"The job's parameters are invalid: {exc}"
            ) from None

    def should_stop(self) -> bool:
        """True once the job has been cancelled; cheap to call often (checks ~once a second)."""
        return cancel_watch.WATCH.cancelled(self.job_id)

    def checkpoint(self, result: dict[str, Any], *, attempts: int = 3) -> None:
        """Record a side effect that must not be repeated, before the task acknowledges.

        A redelivered or retried job sees it in :attr:`result`. Tries a few times, since
        losing the record would let a redelivery repeat the effect; if the database stays
        unreachable, the job fails rather than risk doing it twice.
        """
        for attempt in range(1, attempts + 1):
            try:
                with session_scope() as session:
                    jobs.record_result(session, self.job_id, result)
                self.result = result
                return
            except OperationalError as exc:
                logger.warning(
                    "job %s: recording a checkpoint failed (%d): %s", self.job_id, attempt, exc
                )
                time.sleep(0.5 * attempt)
        raise PermanentJobError(
            "checkpoint_failed",
            "The work was done but the database was unreachable to record it; "
            "it was not repeated. Check the outcome before submitting again.",
        )

    def set_progress(self, percent: float, eta_seconds: float | None = None) -> None:
        """Record progress 0-100 and, if known, the seconds left (the job's ``eta_at``)."""
        percent = max(0, min(100, int(percent)))
        eta_at = None
        if eta_seconds is not None:
            eta_at = utcnow() + timedelta(seconds=max(0.0, eta_seconds))
        with session_scope() as session:
            jobs.set_progress(session, self.job_id, percent, eta_at)


def retry_delay(retries: int, base: float, cap: float) -> int:
    """Exponential backoff with full jitter, in whole seconds, at least one.

    Uniform in [1, max(1, min(cap, base * 2**retries))]; whole seconds because
    RabbitMQ's delayed delivery (quorum queues) works at one-second granularity.
    """
    ceiling = max(1.0, min(cap, base * (2**retries)))
    return math.ceil(random.uniform(1.0, ceiling))


class AwaitChildren:
    """Returned by a work function that fanned out: its last child job finishes it."""


AWAIT_CHILDREN = AwaitChildren()

WorkFunction = Callable[[JobContext], "dict[str, Any] | AwaitChildren"]


def register_job_task(app: Celery, name: str, work: WorkFunction, **options: Any) -> Task:
    """Register ``work`` as the Celery task ``name`` running one job by id."""

    def run(task: Task, **kwargs: Any) -> None:
        try:
            payload = JobPayload.model_validate(kwargs)
        except ValidationError as exc:
            # A malformed message can never succeed: log it and let it be acked.
            logger.error("task %s got a malformed payload %r: %s", name, kwargs, exc)
            return
        _run_job(task, payload.job_id, work)

    return app.task(name=name, bind=True, **options)(run)


def _run_job(task: Task, job_id: uuid.UUID, work: WorkFunction) -> None:
    telemetry.mark_job(job_id)
    with job_context(job_id):
        delivery_info = task.request.delivery_info or {}
        try:
            context = _start(job_id, redelivered=bool(delivery_info.get("redelivered")))
        except OperationalError as exc:
            _retry_start(task, job_id, exc)
        if context is None:
            return
        cancel_watch.WATCH.watch(job_id)
        try:
            _run_work(task, context, work)
        finally:
            cancel_watch.WATCH.forget(job_id)


def _run_work(task: Task, context: JobContext, work: WorkFunction) -> None:
    """Run the work of a started job and record how it ended."""
    job_id = context.job_id
    started = time.monotonic()
    try:
        result = work(context)
    except JobCancelled:
        _finish(
            job_id,
            JobState.CANCELLED,
            error_code="cancelled",
            error_message="The job was cancelled while it ran.",
        )
        logger.info("job %s cancelled while running", job_id)
    except PermanentJobError as exc:
        _fail(job_id, exc, task)
    except (TransientJobError, OperationalError) as exc:
        error = (
            exc
            if isinstance(exc, JobError)
            else TransientJobError("database_unavailable", "The job database was unreachable.")
        )
        _retry_or_fail(task, job_id, error)
    except Exception as exc:
        logger.exception("job %s failed with an unexpected error", job_id)
        _fail(
            job_id, PermanentJobError("internal_error", f"Unexpected worker error: {exc!r}"), task
        )
    else:
        if isinstance(result, AwaitChildren):
            logger.info("job %s fanned out in %.3fs", job_id, time.monotonic() - started)
            return
        _finish(job_id, JobState.SUCCEEDED, result=result)
        logger.info("job %s succeeded in %.3fs", job_id, time.monotonic() - started)


def _start(job_id: uuid.UUID, redelivered: bool = False) -> JobContext | None:
    """Mark the job running; ``None`` when it must not run (gone, finished, cancelled).

    The usual case is one conditional ``UPDATE``; only when it matches nothing is the
    row read to find out why.
    """
    with session_scope() as session:
        try:
            job = jobs.transition(
                session,
                job_id,
                JobState.RUNNING,
                unless_cancel_requested=True,
                error_code=None,
                error_message=None,
            )
        except (jobs.JobNotFound, IllegalTransition):
            _explain_not_started(session, job_id)
            return None
    if redelivered and job.attempts > 1:
        logger.warning("job %s redelivered (attempt %d)", job_id, job.attempts)
    return JobContext(
        job_id=job.id,
        kind=job.kind,
        params=dict(job.params),
        attempt=job.attempts,
        result=dict(job.result) if job.result else None,
    )


#: Retries of a job whose start could not be recorded: no limit, since the job is still
#: queued and acknowledging its only message would leave it queued forever.
START_RETRY_LIMIT = sys.maxsize


def _retry_start(task: Task, job_id: uuid.UUID, exc: OperationalError) -> NoReturn:
    """Publish the job's task again later: the database was unreachable to start it."""
    settings = get_settings()
    delay = retry_delay(task.request.retries, settings.retry_backoff, settings.retry_backoff_max)
    logger.warning(
        "job %s not started: the job database is unreachable (%s); trying again in %ds",
        job_id,
        type(exc.orig or exc).__name__,
        delay,
    )
    raise task.retry(countdown=delay, max_retries=START_RETRY_LIMIT)


def _explain_not_started(session: Session, job_id: uuid.UUID) -> None:
    """Log why a job was not started, and cancel it if a cancel was waiting for it."""
    try:
        job = jobs.get_job(session, job_id)
    except jobs.JobNotFound:
        logger.warning("job %s not found; dropping its message", job_id)
        return
    if job.job_state.is_terminal:
        logger.info("job %s is already %s; skipping redelivered message", job_id, job.state)
    elif job.cancel_requested:
        jobs.transition(
            session,
            job_id,
            JobState.CANCELLED,
            error_code="cancelled",
            error_message="The job was cancelled.",
        )
    else:
        logger.info("job %s not started: it is %s", job_id, job.state)


def _finish(job_id: uuid.UUID, state: JobState, **values: Any) -> None:
    with session_scope() as session:
        try:
            jobs.transition(session, job_id, state, **values)
        except IllegalTransition as exc:
            # Cancelled by the API while the work ran: the cancel stands.
            logger.info("job %s outcome %s not recorded: %s", job_id, state.value, exc)


def _fail(job_id: uuid.UUID, error: JobError, task: Task | None = None) -> None:
    logger.warning("job %s failed: %s: %s", job_id, error.code, error.message)
    if task is not None:
        # The task returns normally; count it as the failure it is (celery_task_failed_total).
        setattr(task.request, JOB_FAILED_ATTRIBUTE, error.code)
    _finish(job_id, JobState.FAILED, error_code=error.code, error_message=error.message)


def _retry_or_fail(task: Task, job_id: uuid.UUID, error: JobError) -> None:
    settings = get_settings()
    retries = task.request.retries
    if retries >= settings.max_retries:
        _fail(
            job_id,
            type(error)(error.code, f"{error.message} (gave up after {retries + 1} attempts)"),
            task,
        )
        return
    delay = retry_delay(retries, settings.retry_backoff, settings.retry_backoff_max)
    _finish(job_id, JobState.RETRYING, error_code=error.code, error_message=error.message)
    logger.warning(
        "job %s: %s; retry %d/%d in %ds",
        job_id,
        error.message,
        retries + 1,
        settings.max_retries,
        delay,
    )
    raise task.retry(countdown=delay, max_retries=settings.max_retries)
