"""Job records: create, read, list and move between states (the one place transitions happen)."""

from __future__ import annotations

import base64
import binascii
import functools
import logging
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, cast

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    and_,
    bindparam,
    case,
    delete,
    event,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from sous_core import batches, metrics, webhooks
from sous_core.db.models import Job, WebhookDelivery, utcnow
from sous_core.states import (
    OPERATOR_REQUEUE_SOURCES,
    TERMINAL_STATES,
    IllegalTransition,
    JobState,
    sources_of,
)

#: Largest page ``list_jobs`` returns.
MAX_PAGE_SIZE = 200

logger = logging.getLogger("sous.jobs")


class JobNotFound(LookupError):
    pass


class InvalidCursor(ValueError):
    pass


class RequeueRefused(ValueError):
    """An operator asked to requeue a job that may not be run again (see ``requeue_failed``)."""


def transition(
    session: Session,
    job_id: uuid.UUID,
    target: JobState,
    *,
    only_from: Collection[JobState] | None = None,
    unless_cancel_requested: bool = False,
    **values: Any,
) -> Job:
    """Move a job to ``target`` if its current state allows it, atomically.

    The check and the write are one conditional ``UPDATE``, so two processes racing
    (the API marking a job queued while a worker starts it) cannot both win an illegal
    move. ``only_from`` narrows the legal sources further for one caller, and
    ``unless_cancel_requested`` refuses the move for a job with a pending cancel.
    Timestamps and the attempt counter follow from the target state.

    Entering a terminal state also queues the job's webhook and counts it as finished in
    its batch, in the same transaction, whoever made the move (worker, API, sweeper).
    """
    now = utcnow()
    values = {"state": target.value, "updated_at": now, **values}
    if target is JobState.QUEUED:
        values.setdefault("queued_at", now)
    elif target is JobState.RUNNING:
        values.setdefault("started_at", now)
        values.setdefault("heartbeat_at", now)
        # A worker may start a job before the API has marked it queued: it was queued.
        # Each process reads its own clock, so the API's queued_at can also land a hair
        # after the worker's now; keep queued_at <= started_at either way.
        values.setdefault(
            "queued_at",
            case(
                (or_(Job.queued_at.is_(None), Job.queued_at > now), now),
                else_=Job.queued_at,
            ),
        )
        values["attempts"] = Job.attempts + 1
    elif target in TERMINAL_STATES:
        values.setdefault("finished_at", now)
        values.setdefault("eta_at", None)
        if target is JobState.SUCCEEDED:
            values.setdefault("progress", 100)
    sources = sources_of(target)
    if only_from is not None:
        sources &= frozenset(only_from)
    allowed = [state.value for state in sources]
    conditions = [Job.id == job_id, Job.state.in_(allowed)]
    if unless_cancel_requested:
        conditions.append(Job.cancel_requested.is_(False))
    statement = (
        update(Job)
        .where(*conditions)
        .values(**values)
        .returning(Job)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    job = session.execute(statement).scalar_one_or_none()
    if job is not None:
        if target in TERMINAL_STATES:
            _on_terminal(session, job)
        return job
    current = session.execute(select(Job.state).where(Job.id == job_id)).scalar_one_or_none()
    if current is None:
        raise JobNotFound(str(job_id))
    raise IllegalTransition(JobState(current), target)


def _start_statement() -> Any:
    table = cast(Table, Job.__table__)
    now = bindparam("now", type_=table.c.started_at.type)
    return (
        update(table)
        .where(
            table.c.id == bindparam("job_id", type_=table.c.id.type),
            table.c.state.in_([state.value for state in sources_of(JobState.RUNNING)]),
            table.c.cancel_requested.is_(False),
            or_(
                table.c.state != JobState.RUNNING.value,
                table.c.heartbeat_at.is_(None),
                table.c.heartbeat_at < bindparam("live_since", type_=table.c.heartbeat_at.type),
            ),
        )
        .values(
            state=JobState.RUNNING.value,
            started_at=now,
            heartbeat_at=now,
            updated_at=now,
            # As in transition(): keep queued_at <= started_at whoever's clock wrote it.
            queued_at=case(
                (or_(table.c.queued_at.is_(None), table.c.queued_at > now), now),
                else_=table.c.queued_at,
            ),
            attempts=table.c.attempts + 1,
            error_code=None,
            error_message=None,
        )
        .returning(table.c.id, table.c.kind, table.c.params, table.c.attempts, table.c.result)
    )


#: Built once: a worker starts every job it runs with it.
_START = _start_statement()


def _lock_statement() -> Any:
    table = cast(Table, Job.__table__)
    job_id = bindparam("job_id", type_=table.c.id.type)
    return select(table.c.id).where(table.c.id == job_id).with_for_update()


#: Waits for any transaction changing the job's row (``start_job``).
_LOCK = _lock_statement()


def start_job(session: Session, job_id: uuid.UUID, live_within: float) -> Any | None:
    """``transition(job, RUNNING, unless_cancel_requested=True)`` with the error cleared,
    for the job runner: the row's id, kind, params, attempts and result, or ``None`` when
    the job may not start (gone, finished, cancel requested, or running with a heartbeat
    younger than ``live_within`` seconds: read it to tell which).

    A running job starts again only once its heartbeat has stopped: a second message for
    it (a redelivery after a broker restart, a duplicate publish) must not run the work
    beside an attempt that is still alive.

    A statement built once rather than per call: building it was a third of a fast
    worker's CPU per job.

    When it matches nothing, the row is locked and the statement tried once more. An
    ``UPDATE`` skips a row whose committed version fails its ``WHERE`` without waiting
    for a transaction that is changing it, so a job an operator's replay is putting back
    to ``queued`` (``requeue_failed`` commits only once the message is confirmed, and the
    message may already be here) would look ``failed`` and its only message be dropped.
    The lock waits for such a transaction; the second try sees what it committed.
    """
    connection = session.connection()
    started = _execute_start(connection, job_id, live_within)
    if started is None:
        connection.execute(_LOCK, {"job_id": job_id})
        started = _execute_start(connection, job_id, live_within)
    return started


def _execute_start(connection: Connection, job_id: uuid.UUID, live_within: float) -> Any | None:
    now = utcnow()
    values = {"job_id": job_id, "now": now, "live_since": now - timedelta(seconds=live_within)}
    return connection.execute(_START, values).one_or_none()


def is_live(job: Job, live_within: float, now: datetime | None = None) -> bool:
    """Whether ``job`` is running with a heartbeat younger than ``live_within`` seconds."""
    if job.job_state is not JobState.RUNNING or job.heartbeat_at is None:
        return False
    return job.heartbeat_at >= (now or utcnow()) - timedelta(seconds=live_within)


#: ``Session.info`` key: (kind, state) of the jobs this transaction finished.
_FINISHED_KEY = "sous_finished_jobs"


#: ``Session.info`` key: the batches whose children this transaction finished.
_SETTLE_KEY = "sous_batches_to_settle"


#: ``Session.info`` key: the committed batches to settle once the connection is returned.
_SETTLE_NOW_KEY = "sous_batches_to_settle_now"


@event.listens_for(Session, "after_commit")
def _count_finished(session: Session) -> None:
    """Count finished jobs once their outcome is committed (not for a rolled-back one);
    the batches whose children finished are settled once the transaction has ended."""
    for kind, state in session.info.pop(_FINISHED_KEY, ()):
        metrics.JOBS_FINISHED.labels(kind=kind, state=state).inc()
    parents = session.info.pop(_SETTLE_KEY, None)
    if parents:
        session.info.setdefault(_SETTLE_NOW_KEY, set()).update(parents)


@event.listens_for(Session, "after_rollback")
def _forget_finished(session: Session) -> None:
    session.info.pop(_FINISHED_KEY, None)
    session.info.pop(_SETTLE_KEY, None)


@event.listens_for(Session, "after_transaction_end")
def _settle_committed_batches(session: Session, transaction: Any) -> None:
    """Settle batches after the commit, with the session's connection back in the pool.

    (In ``after_commit`` the connection is still checked out: a hundred greenlets each
    holding one and asking for a second would exhaust the pool.)
    """
    if transaction.parent is not None:
        return
    parents = session.info.pop(_SETTLE_NOW_KEY, None)
    if parents:
        bind = session.get_bind()
        if _settle_later is not None:
            _settle_later(bind, parents)
            return
        for parent_id in parents:
            settle_batch(bind, parent_id)


#: Takes ``(bind, parent ids)`` after a commit that finished children of those batches,
#: instead of recounting them at once; see :func:`defer_batch_settling`.
BatchSettler = Callable[[Engine | Connection, Collection[uuid.UUID]], None]
_settle_later: BatchSettler | None = None


def defer_batch_settling(settler: BatchSettler | None) -> None:
    """Hand the recounts of batches whose children finished to ``settler``.

    By default a commit that finishes a child recounts its batch at once. A worker that
    finishes many children of one batch within milliseconds (the gevent pool) installs a
    settler that makes one recount for several of them; a recount it loses is made by the
    maintenance sweep. ``None`` restores recounting at once.
    """
    global _settle_later
    _settle_later = settler


class _Finished(webhooks.FinishedJob, Protocol):
    @property
    def kind(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def parent_id(self) -> uuid.UUID | None: ...


def finish_job(session: Session, job_id: uuid.UUID, target: JobState, **values: Any) -> None:
    """``transition(session, job_id, target, **values)`` for a worker recording a job's
    outcome, without the ORM: a statement built once per target and set of values (the
    ORM update was a tenth of a fast worker's CPU per job). Raises as ``transition`` does.
    """
    if target not in TERMINAL_STATES:
        transition(session, job_id, target, **values)
        return
    parameters = {f"new_{key}": value for key, value in values.items()}
    statement = _finish_statement(target, frozenset(values))
    row = (
        session.connection()
        .execute(statement, {"job_id": job_id, "now": utcnow(), **parameters})
        .one_or_none()
    )
    if row is None:
        # Not a legal move now: transition() says why (or makes it, if the state just changed).
        transition(session, job_id, target, **values)
        return
    _on_terminal(session, row)


@functools.cache
def _finish_statement(target: JobState, keys: frozenset[str]) -> Any:
    table = cast(Table, Job.__table__)
    now = bindparam("now", type_=table.c.finished_at.type)
    values: dict[str, Any] = {
        "state": target.value,
        "updated_at": now,
        "finished_at": now,
        "eta_at": None,
    }
    if target is JobState.SUCCEEDED:
        values["progress"] = 100
    for key in keys:
        values[key] = bindparam(f"new_{key}", type_=table.c[key].type)
    return (
        update(table)
        .where(
            table.c.id == bindparam("job_id", type_=table.c.id.type),
            table.c.state.in_([state.value for state in sources_of(target)]),
        )
        .values(**values)
        .returning(
            table.c.id,
            table.c.kind,
            table.c.state,
            table.c.parent_id,
            table.c.callback_url,
            table.c.tenant_id,
        )
    )


def _on_terminal(session: Session, job: _Finished) -> None:
    session.info.setdefault(_FINISHED_KEY, []).append((job.kind, job.state))
    webhooks.enqueue_delivery(session, job)
    if job.parent_id is not None:
        _settle_after_commit(session, job.parent_id)


def _settle_after_commit(session: Session, parent_id: uuid.UUID) -> None:
    session.info.setdefault(_SETTLE_KEY, set()).add(parent_id)


def settle_batch(bind: Engine | Connection, parent_id: uuid.UUID) -> bool:
    """Recount a batch's finished children and finish it if that was the last; never raises.

    True when the batch is settled (finished now or already, or still waiting for
    children); False when the database could not be asked: the redelivered child or
    the maintenance sweep settles it later.
    """
    try:
        if batches.settle(bind, parent_id):
            with Session(bind) as session:
                finish_batch(session, parent_id)
                session.commit()
    except Exception:
        logger.warning("batch %s not settled now; the sweep will", parent_id, exc_info=True)
        return False
    return True


def settle_unsettled_batches(session: Session) -> list[uuid.UUID]:
    """Finish every batch whose children all finished but whose last recount was lost."""
    settled = []
    for parent_id in batches.unsettled(session):
        if settle_batch(session.get_bind(), parent_id):
            settled.append(parent_id)
            logger.warning("batch %s: every child had finished; finished it now", parent_id)
    return settled


def finish_batch(session: Session, parent_id: uuid.UUID) -> Job | None:
    """Finish a batch whose children have all finished; ``None`` if it already was.

    The batch succeeds (its result says how each child ended) unless it was cancelled.
    """
    # A column read, not the session's copy of the parent, which may predate a cancel.
    cancel_requested = session.execute(
        select(Job.cancel_requested).where(Job.id == parent_id)
    ).scalar_one()
    result = batches.aggregate(session, parent_id)
    extra: dict[str, Any] = {}
    target = JobState.SUCCEEDED
    if cancel_requested:
        target = JobState.CANCELLED
        extra = {"error_code": "cancelled", "error_message": "The batch was cancelled."}
    try:
        return transition(
            session, parent_id, target, only_from={JobState.RUNNING}, result=result, **extra
        )
    except IllegalTransition:
        return None


def get_job(session: Session, job_id: uuid.UUID, tenant_id: uuid.UUID | None = None) -> Job:
    """A job by id; with ``tenant_id``, another tenant's job is reported as not found."""
    statement = select(Job).where(Job.id == job_id)
    if tenant_id is not None:
        statement = statement.where(Job.tenant_id == tenant_id)
    job = session.execute(statement).scalar_one_or_none()
    if job is None:
        raise JobNotFound(str(job_id))
    return job


@dataclass(frozen=True)
class JobPage:
    jobs: list[Job]
    next_cursor: str | None


def encode_cursor(created_at: datetime, job_id: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{job_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, _, job_id = raw.partition("|")
        created_at = datetime.fromisoformat(created)
        if created_at.tzinfo is None:
            raise ValueError("cursor timestamp has no timezone")
        return created_at, uuid.UUID(job_id)
    except (ValueError, UnicodeDecodeError, binascii.Error) as exc:
        raise InvalidCursor("the cursor is not one this API returned") from exc


def list_jobs(
    session: Session,
    tenant_id: uuid.UUID,
    *,
    limit: int = 50,
    cursor: str | None = None,
    kind: str | None = None,
    state: JobState | None = None,
    parent_id: uuid.UUID | None = None,
    schedule_id: uuid.UUID | None = None,
) -> JobPage:
    """A tenant's jobs, newest first, ``limit`` at a time; pass ``next_cursor`` for more.

    Only top-level jobs, unless ``parent_id`` asks for the children of one batch;
    ``schedule_id`` keeps the jobs one schedule created.
    """
    statement = select(Job).where(
        Job.tenant_id == tenant_id,
        Job.parent_id.is_(None) if parent_id is None else Job.parent_id == parent_id,
    )
    if kind is not None:
        statement = statement.where(Job.kind == kind)
    if state is not None:
        statement = statement.where(Job.state == state.value)
    if schedule_id is not None:
        statement = statement.where(Job.schedule_id == schedule_id)
    if cursor is not None:
        created_at, job_id = decode_cursor(cursor)
        statement = statement.where(
            or_(
                Job.created_at < created_at,
                and_(Job.created_at == created_at, Job.id < job_id),
            )
        )
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    statement = statement.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    jobs = list(session.execute(statement).scalars())
    next_cursor = None
    if len(jobs) > limit:
        jobs = jobs[:limit]
        next_cursor = encode_cursor(jobs[-1].created_at, jobs[-1].id)
    return JobPage(jobs=jobs, next_cursor=next_cursor)


def is_cancel_requested(session: Session, job_id: uuid.UUID) -> bool:
    """Whether a running job has been asked to stop (or is already cancelled)."""
    row = session.execute(
        select(Job.cancel_requested, Job.state).where(Job.id == job_id)
    ).one_or_none()
    if row is None:
        return True
    return bool(row.cancel_requested) or row.state == JobState.CANCELLED.value


_UNSTARTED = (JobState.PENDING, JobState.QUEUED, JobState.RETRYING)


def heartbeat(session: Session, job_ids: Collection[uuid.UUID], now: datetime) -> None:
    """Record that the worker running these jobs is alive."""
    session.execute(
        update(Job)
        .where(Job.id.in_(list(job_ids)), Job.state == JobState.RUNNING.value)
        .values(heartbeat_at=now)
        .execution_options(synchronize_session=False)
    )


def stuck_jobs(
    session: Session,
    now: datetime,
    silence_by_kind: dict[str, float],
    default_silence: float,
    limit: int = 500,
) -> list[Job]:
    """Running jobs whose worker has been silent longer than their kind allows.

    A batch waiting for its children sends no heartbeats and is never stuck itself.
    Rows are locked and other reapers skip them (PostgreSQL).
    """
    last_sign = func.coalesce(Job.heartbeat_at, Job.started_at)
    kinds = list(silence_by_kind)
    conditions = [
        and_(Job.kind == kind, last_sign < now - timedelta(seconds=seconds))
        for kind, seconds in silence_by_kind.items()
    ]
    conditions.append(
        and_(Job.kind.not_in(kinds), last_sign < now - timedelta(seconds=default_silence))
    )
    statement = (
        select(Job)
        .where(Job.state == JobState.RUNNING.value, Job.children_total.is_(None), or_(*conditions))
        .order_by(last_sign)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(session.execute(statement).scalars())


def cancel_requested_among(session: Session, job_ids: Collection[uuid.UUID]) -> set[uuid.UUID]:
    """Which of ``job_ids`` must stop: cancel requested, already cancelled, or gone."""
    rows = session.execute(
        select(Job.id, Job.cancel_requested, Job.state).where(Job.id.in_(list(job_ids)))
    ).all()
    present = {row.id for row in rows}
    stopped = {
        row.id for row in rows if row.cancel_requested or row.state == JobState.CANCELLED.value
    }
    return stopped | (set(job_ids) - present)


def request_cancel(session: Session, job: Job) -> Job:
    """Cancel a job that has not started; flag a running one so its worker stops.

    Cancelling a running batch cancels its children that have not started and flags
    the running ones; the batch ends ``cancelled`` when the last of them has stopped.
    """
    if job.job_state is JobState.RUNNING:
        _flag_cancel(session, Job.id == job.id)
        if job.children_total is not None:
            cancel_children(session, job.id)
        session.refresh(job)
        return job
    return transition(
        session,
        job.id,
        JobState.CANCELLED,
        error_code="cancelled",
        error_message="The job was cancelled before it ran.",
    )


def _flag_cancel(session: Session, condition: Any) -> None:
    session.execute(
        update(Job)
        .where(condition)
        .values(cancel_requested=True, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def cancel_children(session: Session, parent_id: uuid.UUID) -> None:
    """Cancel a batch's children that have not started; flag the running ones."""
    now = utcnow()
    cancelled = session.execute(
        update(Job)
        .where(Job.parent_id == parent_id, Job.state.in_([s.value for s in _UNSTARTED]))
        .values(
            state=JobState.CANCELLED.value,
            error_code="cancelled",
            error_message="The batch was cancelled before this job ran.",
            updated_at=now,
            finished_at=now,
        )
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    ).all()
    _flag_cancel(session, and_(Job.parent_id == parent_id, Job.state == JobState.RUNNING.value))
    if cancelled:
        _settle_after_commit(session, parent_id)


def requeue_failed(session: Session, job_id: uuid.UUID) -> Job:
    """Put a failed job back to ``queued`` for an operator replaying its dead letter.

    The only move out of a final state (``states.OPERATOR_REQUEUE_SOURCES``); the caller
    publishes the job's message in the same transaction. ``attempts`` is kept, so the
    next run counts as one more attempt; ``result`` is kept too (an email job records
    there that it was sent). The failure's error and finish time are cleared, and the
    webhook it queued is dropped so the job's final outcome gets a delivery of its own.
    Refused for a job of a batch (the batch already counted it finished) and for one
    its tenant asked to cancel.
    """
    now = utcnow()
    job = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.state.in_([state.value for state in OPERATOR_REQUEUE_SOURCES]),
            Job.parent_id.is_(None),
            Job.children_total.is_(None),
            Job.cancel_requested.is_(False),
        )
        .values(
            state=JobState.QUEUED.value,
            queued_at=now,
            updated_at=now,
            finished_at=None,
            error_code=None,
            error_message=None,
        )
        .returning(Job)
        .execution_options(synchronize_session=False, populate_existing=True)
    ).scalar_one_or_none()
    if job is not None:
        session.execute(delete(WebhookDelivery).where(WebhookDelivery.job_id == job_id))
        return job
    current = session.execute(select(Job).where(Job.id == job_id)).scalar_one_or_none()
    if current is None:
        raise JobNotFound(str(job_id))
    if current.job_state not in OPERATOR_REQUEUE_SOURCES:
        raise RequeueRefused(f"the job is {current.state}, not failed")
    if current.cancel_requested:
        raise RequeueRefused("its tenant asked to cancel the job")
    raise RequeueRefused("the job is part of a batch, which already counted it finished")


def mark_queued(session: Session, job_ids: Collection[uuid.UUID]) -> int:
    """Mark published jobs ``queued`` unless a worker already started them; returns how many."""
    if not job_ids:
        return 0
    now = utcnow()
    rows = session.execute(
        update(Job)
        .where(Job.id.in_(list(job_ids)), Job.state == JobState.PENDING.value)
        .values(state=JobState.QUEUED.value, queued_at=now, updated_at=now)
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    ).all()
    return len(rows)


def record_result(
    session: Session, job_id: uuid.UUID, result: dict[str, Any], attempt: int | None = None
) -> bool:
    """Store an unfinished job's result so far (e.g. "the email was sent"); False once it
    finished, or with ``attempt``, once another attempt started it. Not only while
    ``running``: an attempt the reaper gave up on (its job back to ``queued``) that still
    completes its side effect must record it for the next attempt."""
    conditions = [Job.id == job_id, Job.state.notin_([s.value for s in TERMINAL_STATES])]
    if attempt is not None:
        conditions.append(Job.attempts == attempt)
    row = session.execute(
        update(Job)
        .where(*conditions)
        .values(result=result, updated_at=utcnow())
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    return row is not None


def state_and_result(session: Session, job_id: uuid.UUID) -> tuple[JobState, dict[str, Any] | None]:
    """A job's state and what it recorded so far (checkpoints, or its final result)."""
    state, result = session.execute(select(Job.state, Job.result).where(Job.id == job_id)).one()
    return JobState(state), result


def set_progress(
    session: Session, job_id: uuid.UUID, percent: int, eta_at: datetime | None = None
) -> None:
    """Record progress (and the expected finish) of a running job; ignored once it left
    ``running``. Also a heartbeat."""
    now = utcnow()
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.RUNNING.value)
        .values(progress=percent, eta_at=eta_at, updated_at=now, heartbeat_at=now)
        .execution_options(synchronize_session=False)
    )


def stale_pending_jobs(session: Session, older_than: float, limit: int = 500) -> list[Job]:
    """Jobs still ``pending`` ``older_than`` seconds after creation, oldest first.

    Rows are locked and other sweepers skip them (PostgreSQL), so two sweeps never
    publish the same job twice.
    """
    cutoff = utcnow() - timedelta(seconds=older_than)
    statement = (
        select(Job)
        .where(Job.state == JobState.PENDING.value, Job.created_at < cutoff)
        .order_by(Job.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(session.execute(statement).scalars())
