"""Worker side of a job: load the row, run the work, record the outcome, retry or fail.

Every job task goes through ``register_job_task`` so redelivery, cancellation,
transient/permanent errors and bad payloads are handled the same way everywhere.

PostgreSQL unreachable: a task that cannot record its start is published again
(``_retry_start``); one that cannot record its outcome waits for the database (see
``_record_outcome``); neither is acknowledged as done without its record.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, NoReturn, TypeVar

from celery import Celery, Task
from celery.worker import state as worker_state
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from sous_core import cancel_watch, jobs, telemetry
from sous_core.celery_metrics import JOB_FAILED_ATTRIBUTE
from sous_core.db.engine import session_scope
from sous_core.db.models import utcnow
from sous_core.errors import (
    AttemptSuperseded,
    JobCancelled,
    JobError,
    PermanentJobError,
    TransientJobError,
)
from sous_core.logs import job_context
from sous_core.outage_wait import OutageOutlasted, write_through_outage
from sous_core.settings import get_settings
from sous_core.states import IllegalTransition, JobState
from sous_core.tasks import JobPayload

logger = logging.getLogger("sous.jobs")

_Params = TypeVar("_Params", bound=BaseModel)


#: Seconds progress updates are skipped after one failed because the database was down.
PROGRESS_OUTAGE_PAUSE_SECONDS = 10.0


@dataclass
class JobContext:
    """What the work function of a job sees: its id, parameters and a way to report."""

    job_id: uuid.UUID
    kind: str
    params: dict[str, Any]
    attempt: int
    #: What an earlier attempt recorded with :meth:`checkpoint` (``None`` on a first run).
    result: dict[str, Any] | None = None
    #: ``time.monotonic()`` before which progress is not written (the database was down).
    _progress_resumes_at: float = field(default=0.0, repr=False)

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

    def checkpoint(self, result: dict[str, Any], *, claim: bool = False) -> None:
        """Record a side effect that must not be repeated, before the task acknowledges.

        A redelivered or retried job sees it in :attr:`result`. With ``claim`` (recording
        that an effect is about to happen), only while this attempt still owns the job:
        otherwise :class:`AttemptSuperseded` is raised and the effect must not happen.
        While the database is unreachable this waits for it, up to
        ``SOUS_OUTCOME_WRITE_PATIENCE_SECONDS``, since
        losing the record would let a redelivery repeat the effect; it keeps waiting
        through a worker shutdown for the same reason. If the database stays unreachable,
        the job fails rather than risk doing it twice.
        """

        def record() -> bool:
            with session_scope() as session:
                return jobs.record_result(
                    session, self.job_id, result, attempt=self.attempt if claim else None
                )

        try:
            recorded = write_through_outage(
                record,
                what=f"job {self.job_id}: recording a checkpoint",
                patience=get_settings().outcome_write_patience_seconds,
            )
        except OutageOutlasted as exc:
            logger.error("%s", exc)
            raise PermanentJobError(
                "checkpoint_failed",
                "The work was done but the database was unreachable to record it; "
                "it was not repeated. Check the outcome before submitting again.",
            ) from None
        if claim and not recorded:
            raise AttemptSuperseded(
                f"job {self.job_id}: attempt {self.attempt} was superseded; "
                "its side effect was not started"
            )
        self.result = result

    def set_progress(self, percent: float, eta_seconds: float | None = None) -> None:
        """Record progress 0-100 and, if known, the seconds left (the job's ``eta_at``).

        Progress is best effort: while the database is unreachable an update is skipped
        with a warning and the work goes on (the outcome, written later, waits for the
        database). After a failed write, updates are skipped for
        ``PROGRESS_OUTAGE_PAUSE_SECONDS`` rather than each waiting for a connect timeout.
        """
        if time.monotonic() < self._progress_resumes_at:
            return
        percent = max(0, min(100, int(percent)))
        eta_at = None
        if eta_seconds is not None:
            eta_at = utcnow() + timedelta(seconds=max(0.0, eta_seconds))
        try:
            with session_scope() as session:
                jobs.set_progress(session, self.job_id, percent, eta_at)
        except OperationalError as exc:
            self._progress_resumes_at = time.monotonic() + PROGRESS_OUTAGE_PAUSE_SECONDS
            logger.warning(
                "job %s: progress %d%% not recorded, the database is unreachable (%s); "
                "the work goes on, progress is skipped for %.0f s",
                self.job_id,
                percent,
                type(exc.orig or exc).__name__,
                PROGRESS_OUTAGE_PAUSE_SECONDS,
            )


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
        context = _start_when_free(task, job_id, bool(delivery_info.get("redelivered")))
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
    except AttemptSuperseded as exc:
        # Another attempt owns the job now (or it ended): it records the outcome.
        logger.warning("%s", exc)
    except JobCancelled:
        _record_outcome(
            task,
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
        _record_outcome(task, job_id, JobState.SUCCEEDED, result=result)
        logger.info("job %s succeeded in %.3fs", job_id, time.monotonic() - started)


class _LiveElsewhere:
    """What :func:`_start` returns for a job another attempt is still running."""


LIVE_ELSEWHERE = _LiveElsewhere()


def _start(job_id: uuid.UUID, redelivered: bool = False) -> JobContext | _LiveElsewhere | None:
    """Mark the job running; ``None`` when it must not run (gone, finished, cancelled),
    :data:`LIVE_ELSEWHERE` when an attempt with a live heartbeat is running it.

    The usual case is one conditional ``UPDATE``; only when it matches nothing is the
    row read to find out why.
    """
    with session_scope() as session:
        job = jobs.start_job(session, job_id, cancel_watch.live_window())
        if job is None:
            return _explain_not_started(session, job_id)
    if redelivered and job.attempts > 1:
        logger.warning("job %s redelivered (attempt %d)", job_id, job.attempts)
    return JobContext(
        job_id=job.id,
        kind=job.kind,
        params=dict(job.params),
        attempt=job.attempts,
        result=dict(job.result) if job.result else None,
    )


#: Retries of a job whose start (or outcome) could not be recorded: no limit, since
#: acknowledging its only message would leave the job queued (or running) with nothing
#: left to run it.
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


#: Seconds between two looks at a job another attempt is running.
LIVE_POLL_SECONDS = 1.0


def _start_when_free(task: Task, job_id: uuid.UUID, redelivered: bool) -> JobContext | None:
    """Start the job, or ``None`` when it must not run; while another attempt runs it (its
    heartbeat is fresh, or this very process still runs it), wait for that attempt.

    The wait holds this message rather than publishing a new one: a message whose job
    kills its worker comes back redelivered while the dead worker's last heartbeat is
    still fresh, and only the same message keeps the broker's count of its deliveries
    (which dead-letters a poison message). The wait ends when that heartbeat stops (the
    job is taken over), when the job finishes (the message is dropped), or after one
    live window plus a heartbeat: the other attempt is really alive, so the message is
    handed back for later (:func:`_defer_live`).
    """
    window = cancel_watch.live_window()
    deadline = time.monotonic() + window + window / cancel_watch.LIVE_HEARTBEATS
    waited = False
    while True:
        if not cancel_watch.WATCH.watching(job_id):
            try:
                context = _start(job_id, redelivered=redelivered)
            except OperationalError as exc:
                _retry_start(task, job_id, exc)
            if context is not LIVE_ELSEWHERE:
                if waited:
                    logger.info("job %s: the other attempt stopped; this one goes on", job_id)
                return context if isinstance(context, JobContext) else None
        if time.monotonic() >= deadline:
            _defer_live(task, job_id)
        if not waited:
            logger.warning(
                "job %s is running in another attempt; waiting for it to end or fall silent",
                job_id,
            )
            waited = True
        time.sleep(LIVE_POLL_SECONDS)


def _defer_live(task: Task, job_id: uuid.UUID) -> NoReturn:
    """Publish the task again for later: another attempt is running the job right now.

    If that attempt finishes, the later delivery finds the job finished and is dropped;
    if it dies, its heartbeat stops and the later delivery takes the job over.
    """
    delay = max(1, math.ceil(cancel_watch.live_window()))
    logger.warning(
        "job %s is still running in another attempt (its heartbeat is fresh); "
        "looking again in %ds rather than run it twice",
        job_id,
        delay,
    )
    raise task.retry(countdown=delay, max_retries=START_RETRY_LIMIT)


def _explain_not_started(session: Session, job_id: uuid.UUID) -> _LiveElsewhere | None:
    """Log why a job was not started, and cancel it if a cancel was waiting for it."""
    try:
        job = jobs.get_job(session, job_id)
    except jobs.JobNotFound:
        logger.warning("job %s not found; dropping its message", job_id)
        return None
    if not job.cancel_requested and jobs.is_live(job, cancel_watch.live_window()):
        return LIVE_ELSEWHERE
    if job.job_state.is_terminal:
        logger.info("job %s is already %s; skipping redelivered message", job_id, job.state)
        if job.parent_id is not None:
            # The recount after its commit may have been lost with the process.
            jobs.settle_batch(session.get_bind(), job.parent_id)
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
    return None


def _record_outcome(task: Task, job_id: uuid.UUID, state: JobState, **values: Any) -> None:
    """Record how the work ended; while the database is unreachable, wait for it.

    The write is retried with backoff and jitter for up to
    ``SOUS_OUTCOME_WRITE_PATIENCE_SECONDS`` (less if the worker is shutting down). Past
    that, the task is published again with ``task.retry`` and this message acknowledged:
    the job is not acknowledged as done without its outcome, and its next delivery
    finds it ``running``, starts it again (a redelivery) and redoes the work, which every
    task is written to survive (an email's checkpoint keeps it from being sent twice).

    Why a new message rather than ``Reject(requeue=True)``: RabbitMQ counts a requeue
    as a failed delivery, so a long outage would push the message to its delivery limit
    and the dead-letter queue (``dead_letters``), failing the job as if it killed its
    workers; a published retry starts with a fresh count, and its countdown rides
    RabbitMQ's delayed delivery instead of coming straight back to a worker while the
    database is still down. The cost is one broker publish, and one more on the task's
    retry counter (as for ``_retry_start``).

    Meanwhile the job stays watched (``cancel_watch``): its heartbeat resumes within a
    second of the database's return, so the stuck-job reaper, which needs the database
    too and judges by that heartbeat, does not take the job from this worker; the work
    itself has ended, so nothing runs twice at once. Only if the reaper runs in that
    second does it re-queue the job first; this write then finds it ``queued`` and is
    dropped, or lands while the re-queued run is under way and that run's is refused:
    either way the work runs once more, after this one, and one outcome stands. A worker
    told to shut down stops waiting after its current attempt and hands the task back.
    """
    try:
        _write_outcome(job_id, state, values)
    except OutageOutlasted as exc:
        _publish_unrecorded(task, job_id, exc)


def _write_outcome(job_id: uuid.UUID, state: JobState, values: dict[str, Any]) -> None:
    def write() -> None:
        with session_scope() as session:
            try:
                jobs.finish_job(session, job_id, state, **values)
            except IllegalTransition as exc:
                _explain_unrecorded(job_id, state, exc)

    write_through_outage(
        write,
        what=f"job {job_id}: recording state {state.value}",
        patience=get_settings().outcome_write_patience_seconds,
        stop_requested=_worker_stopping,
    )


def _explain_unrecorded(job_id: uuid.UUID, state: JobState, exc: IllegalTransition) -> None:
    if exc.current is state:
        # An earlier attempt committed, but the connection dropped before it heard so.
        logger.info("job %s outcome %s was already recorded", job_id, state.value)
    elif exc.current is JobState.QUEUED:
        logger.warning(
            "job %s outcome %s not recorded: the reaper re-queued the job while its outcome "
            "waited for the database; it will run again",
            job_id,
            state.value,
        )
    else:
        # Cancelled by the API while the work ran: the cancel stands.
        logger.info("job %s outcome %s not recorded: %s", job_id, state.value, exc)


def _worker_stopping() -> bool:
    """Whether this worker was told to shut down (gevent pool; a prefork child never is).

    Celery sets the flag to an exit code, often 0: compared by identity, as Celery does.
    """
    flags = (worker_state.should_stop, worker_state.should_terminate)
    return any(flag is not None and flag is not False for flag in flags)


#: Least seconds before the task a stopping worker hands back is due again. Until its
#: consumer loop notices the shutdown, the worker still takes messages, and one it took
#: would go back to the queue at its exit, counted by RabbitMQ as a failed delivery.
STOPPING_REPUBLISH_DELAY = 10


def _publish_unrecorded(task: Task, job_id: uuid.UUID, exc: OutageOutlasted) -> NoReturn:
    """Publish the job's task again: its outcome could not be recorded, so the work reruns."""
    settings = get_settings()
    delay = retry_delay(task.request.retries, settings.retry_backoff, settings.retry_backoff_max)
    if exc.stopping:
        delay = max(delay, STOPPING_REPUBLISH_DELAY)
    logger.error("%s; publishing the task again in %ds (the work will run again)", exc, delay)
    raise task.retry(countdown=delay, max_retries=START_RETRY_LIMIT)


def _fail(job_id: uuid.UUID, error: JobError, task: Task) -> None:
    logger.warning("job %s failed: %s: %s", job_id, error.code, error.message)
    # The task returns normally; count it as the failure it is (celery_task_failed_total).
    setattr(task.request, JOB_FAILED_ATTRIBUTE, error.code)
    _record_outcome(
        task, job_id, JobState.FAILED, error_code=error.code, error_message=error.message
    )


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
    try:
        _write_outcome(
            job_id,
            JobState.RETRYING,
            {"error_code": error.code, "error_message": error.message},
        )
    except OutageOutlasted as exc:
        # The retry below is what recording it would have led to; the job stays running
        # until its next delivery starts it again.
        logger.error("%s; retrying the job anyway", exc)
    logger.warning(
        "job %s: %s; retry %d/%d in %ds",
        job_id,
        error.message,
        retries + 1,
        settings.max_retries,
        delay,
    )
    raise task.retry(countdown=delay, max_retries=settings.max_retries)
