"""Turning a submission into a job: row first, then the confirmed publish, then ``queued``.

The one path for every job a client asks for, whether through the API or fired by a
schedule. A submission is accepted only once the row is committed and RabbitMQ
confirmed the message. If the broker fails, the row is marked failed (so nothing is
half-written) and the caller is refused with a retryable error, which it may retry
with the same ``Idempotency-Key``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, cast

from celery import Celery
from kombu import Connection
from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from sous_core import jobs, metrics, quotas
from sous_core.db.models import Job, utcnow
from sous_core.enqueue import BrokerUnavailable, publish_job, publish_jobs
from sous_core.states import JobState

logger = logging.getLogger("sous.submissions")

#: Longest ``Idempotency-Key`` accepted.
MAX_IDEMPOTENCY_KEY_LENGTH = 255
#: Seconds a client is told to wait before retrying after a broker failure.
BROKER_RETRY_AFTER_SECONDS = 5
#: The error of a job recorded failed because the broker did not take its message.
BROKER_FAILED_MESSAGE = (
    "The job could not be queued because the message broker was unavailable. Retry the request."
)


class SubmissionRefused(Exception):
    """The job was not accepted; ``status`` is the HTTP status the API answers with."""

    def __init__(
        self, status: int, code: str, message: str, *, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


def request_fingerprint(kind: str, params: dict[str, Any], callback_url: str | None) -> str:
    canonical = json.dumps(
        {"kind": kind, "params": params, "callback_url": callback_url},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_idempotency_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not key or len(key) > MAX_IDEMPOTENCY_KEY_LENGTH or not key.isprintable():
        raise SubmissionRefused(
            400,
            "invalid_idempotency_key",
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} printable characters.",
        )
    return key


def _replay(job: Job, fingerprint: str) -> Job:
    if job.request_sha256 != fingerprint:
        raise SubmissionRefused(
            422,
            "idempotency_key_reused",
            "This Idempotency-Key was already used with a different request body.",
        )
    return job


def _find_by_key(session: Session, tenant_id: uuid.UUID, key: str) -> Job | None:
    return session.execute(
        select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key)
    ).scalar_one_or_none()


_JOBS = cast(Table, Job.__table__)
#: The job table's columns, in the order of the model.
_JOB_COLUMNS = tuple(column.key for column in _JOBS.columns)
#: Statements of the submission path, built once: each use only binds its values.
_INSERT_JOB = insert(_JOBS)
_MARK_QUEUED = (
    update(_JOBS)
    .where(
        _JOBS.c.id.in_(bindparam("job_ids", expanding=True)),
        _JOBS.c.state == JobState.PENDING.value,
    )
    .values(state=JobState.QUEUED.value, queued_at=bindparam("at"), updated_at=bindparam("at"))
    .returning(_JOBS.c.id)
)


def _new_job(**values: Any) -> Job:
    """A job not yet written, every column set (the model's defaults apply only on flush)."""
    now = values.pop("now")
    job = Job(
        id=uuid.uuid4(),
        state=JobState.PENDING.value,
        progress=0,
        result=None,
        error_code=None,
        error_message=None,
        attempts=0,
        cancel_requested=False,
        created_at=now,
        updated_at=now,
        queued_at=None,
        started_at=None,
        finished_at=None,
        parent_id=None,
        batch_index=None,
        children_total=None,
        children_finished=0,
        heartbeat_at=None,
        eta_at=None,
        reaped=0,
        **values,
    )
    return job


def _create_and_charge(session: Session, job: Job, charge: quotas.Charge) -> bool:
    """Write the job row and charge its quota in one transaction; False if the quota refused.

    Core statements rather than the ORM's unit of work: this runs for every job. The
    charge locks the tenant's usage row, which every submission of the tenant updates,
    until the commit: it is the last statement before the commit so that concurrent
    submissions queue behind it as briefly as can be.
    """
    session.connection().execute(_INSERT_JOB, {key: getattr(job, key) for key in _JOB_COLUMNS})
    if quotas.apply_charge(session, charge) is None:
        session.rollback()
        return False
    session.commit()
    return True


def mark_queued(
    session: Session, job_ids: Collection[uuid.UUID]
) -> tuple[datetime, set[uuid.UUID]]:
    """``pending`` → ``queued`` for jobs whose messages the broker confirmed, and commit.

    One statement and one commit however many jobs: the API marks every job confirmed
    while its previous batch was being written in one go (group commit). Returns the
    time written and the ids marked; a job missing from them was no longer pending (a
    worker already started it).
    """
    now = utcnow()
    rows = session.connection().execute(_MARK_QUEUED, {"job_ids": list(job_ids), "at": now})
    marked = {row[0] for row in rows}
    session.commit()
    return now, marked


def _mark_queued(session: Session, job: Job) -> Job:
    """``pending`` → ``queued`` for one job; the job as it is now."""
    now, marked = mark_queued(session, [job.id])
    if job.id in marked:
        job.state = JobState.QUEUED.value
        job.queued_at = job.updated_at = now
        return job
    # A worker already picked the job up; report the state it has now.
    return jobs.get_job(session, job.id)


def submit_job(
    session: Session,
    celery: Celery,
    tenant_id: uuid.UUID,
    kind: str,
    params: dict[str, Any],
    idempotency_key: str | None = None,
    callback_url: str | None = None,
    schedule_id: uuid.UUID | None = None,
    now: datetime | None = None,
    queue_mark: bool = True,
) -> tuple[Job, bool]:
    """Create and enqueue a job; returns ``(job, replayed)``.

    The job is charged to the tenant's daily quota (``now``'s UTC day, the current time
    by default) in the transaction that creates it; a replay is not charged again.
    Raises :class:`SubmissionRefused` when the job is not accepted. Without
    ``queue_mark`` a new job is returned ``pending`` once its message is confirmed, and
    the caller marks it with :func:`mark_queued` (in a batch with others).
    """
    key = check_idempotency_key(idempotency_key)
    fingerprint = request_fingerprint(kind, params, callback_url)
    if key is not None:
        existing = _find_by_key(session, tenant_id, key)
        if existing is not None:
            return _replay(existing, fingerprint), True
    now = utcnow() if now is None else now
    try:
        charge = quotas.prepare_charge(session, tenant_id, kind, params, now)
    except SubmissionRefused:
        session.rollback()
        metrics.API_QUOTA_REJECTIONS.labels(kind=kind).inc()
        raise
    job = _new_job(
        now=utcnow(),
        tenant_id=tenant_id,
        kind=kind,
        params=params,
        idempotency_key=key,
        request_sha256=fingerprint,
        callback_url=callback_url,
        schedule_id=schedule_id,
    )
    try:
        charged = _create_and_charge(session, job, charge)
    except IntegrityError:
        # Another request with the same key won the race; answer with its job.
        session.rollback()
        existing = _find_by_key(session, tenant_id, key) if key else None
        if existing is None:
            raise
        return _replay(existing, fingerprint), True
    if not charged:
        refusal = quotas.refusal(session, charge, now)
        session.rollback()
        metrics.API_QUOTA_REJECTIONS.labels(kind=kind).inc()
        raise refusal

    try:
        publish_job(celery, job)
    except BrokerUnavailable as exc:
        _record_unqueued(session, job, quotas.utc_day(now))
        session.commit()
        raise broker_refusal() from exc

    metrics.JOBS_SUBMITTED.labels(kind=kind).inc()
    if not queue_mark:
        return job, False
    return _mark_queued(session, job), False


@dataclass(frozen=True)
class Submission:
    """One job asked for, to be submitted in a batch (``idempotency_key`` checked already)."""

    tenant_id: uuid.UUID
    kind: str
    params: dict[str, Any]
    callback_url: str | None = None
    idempotency_key: str | None = None


#: What :func:`submit_many` gives back for each submission: ``(job, replayed)``, or why not.
Outcome = tuple[Job, bool] | SubmissionRefused


def submit_many(
    session: Session,
    celery: Celery,
    requests: Sequence[Submission],
    connection: Connection | None = None,
) -> list[Outcome]:
    r"""Submit many jobs at once: one transaction, one wait for the broker's confirms, one mark.

    The group commit of :func:`submit_job` for concurrent requests: every row and quota
    charge is written in one transaction (one charge per tenant and metric, for the sum
    of its jobs), every message published on one channel and confirmed together, and
    every job marked ``queued`` in one statement. Each outcome is what :func:`submit_job`
    would have given that request: ``(job, replayed)`` (a new job ``queued``, or as a
    worker already moved it; a replay as it is), or the :class:`SubmissionRefused` to
    answer with. When a quota refuses a tenant's combined charge, that tenant's jobs are
    submitted one by one, so exactly those past the limit are refused.

    ``Idempotency-Key``\ s: keys already used are answered as replays (one query for the
    batch). A key that comes twice in one batch, or that another request commits while
    this batch is written (the INSERT then violates the key's unique index), sends those
    requests down :func:`submit_job` one by one after the batch, which settles the race
    exactly as for single requests. Rows are inserted in (tenant, key) order, so two
    batches holding the same new keys wait for each other in one order, never in a cycle.

    ``connection`` is the broker connection to publish on (without ``confirm_publish``;
    the caller owns it); by default a new one.
    """
    outcomes: list[Outcome | None] = [None] * len(requests)
    now = utcnow()
    pending: dict[int, tuple[Job, quotas.Charge]] = {}
    used = _find_by_keys(
        session,
        {(r.tenant_id, r.idempotency_key) for r in requests if r.idempotency_key is not None},
    )
    for used_job in used.values():
        # Answered as they are now: detached, the batch's rollback and commit do not expire
        # them, so answering a replay reads no row again.
        session.expunge(used_job)
    first_with_key: set[tuple[uuid.UUID, str]] = set()
    one_by_one: list[int] = []
    for index, request in enumerate(requests):
        fingerprint = request_fingerprint(request.kind, request.params, request.callback_url)
        key = request.idempotency_key
        if key is not None:
            earlier = used.get((request.tenant_id, key))
            if earlier is not None:
                try:
                    outcomes[index] = (_replay(earlier, fingerprint), True)
                except SubmissionRefused as exc:
                    outcomes[index] = exc
                continue
            if (request.tenant_id, key) in first_with_key:
                one_by_one.append(index)  # after the first has been submitted
                continue
            first_with_key.add((request.tenant_id, key))
        try:
            charge = quotas.prepare_charge(
                session, request.tenant_id, request.kind, request.params, now
            )
        except SubmissionRefused as exc:
            metrics.API_QUOTA_REJECTIONS.labels(kind=request.kind).inc()
            outcomes[index] = exc
            continue
        job = _new_job(
            now=now,
            tenant_id=request.tenant_id,
            kind=request.kind,
            params=request.params,
            idempotency_key=key,
            request_sha256=fingerprint,
            callback_url=request.callback_url,
            schedule_id=None,
        )
        pending[index] = (job, charge)
    session.rollback()  # prepare_charge may have read: start the writing transaction afresh
    while pending:
        try:
            refused = _create_and_charge_all(session, list(pending.values()))
        except IntegrityError:
            # A request with one of these keys was committed meanwhile (another batch or
            # API process): the keyed requests go one by one, the rest are written again.
            session.rollback()
            keyed = [i for i, (job, _) in pending.items() if job.idempotency_key is not None]
            if not keyed:
                raise
            for index in keyed:
                del pending[index]
            one_by_one += keyed
            continue
        if not refused:
            break
        # Those tenants' jobs one at a time (each refused or not on its own); the rest again.
        for index in [i for i, (_, charge) in pending.items() if _group(charge) in refused]:
            del pending[index]
            outcomes[index] = _submit_one(session, celery, requests[index])
    if pending:
        for index, outcome in _publish_and_mark(session, celery, pending, connection).items():
            outcomes[index] = outcome
    for index in sorted(one_by_one):
        outcomes[index] = _submit_one(session, celery, requests[index])
    assert all(outcome is not None for outcome in outcomes)
    return cast(list[Outcome], outcomes)


def _find_by_keys(
    session: Session, pairs: set[tuple[uuid.UUID, str]]
) -> dict[tuple[uuid.UUID, str], Job]:
    """The jobs already holding these (tenant, key) pairs."""
    if not pairs:
        return {}
    found = session.execute(
        select(Job).where(
            Job.tenant_id.in_({tenant for tenant, _ in pairs}),
            Job.idempotency_key.in_({key for _, key in pairs}),
        )
    ).scalars()
    by_pair = {(job.tenant_id, cast(str, job.idempotency_key)): job for job in found}
    return {pair: job for pair, job in by_pair.items() if pair in pairs}


def _group(charge: quotas.Charge) -> tuple[uuid.UUID, date, str, bool]:
    return (charge.tenant_id, charge.day, charge.metric, charge.enforce)


def _create_and_charge_all(
    session: Session, pending: list[tuple[Job, quotas.Charge]]
) -> set[tuple[uuid.UUID, date, str, bool]]:
    """Insert every row and charge each tenant's sum; commit, or roll back and return the
    charge groups a quota refused. Raises IntegrityError if a key was taken meanwhile."""
    # Rows in (tenant, key) order: see submit_many on waiting for the same new keys.
    rows = sorted((job for job, _ in pending), key=_key_order)
    session.connection().execute(
        _INSERT_JOB, [{key: getattr(job, key) for key in _JOB_COLUMNS} for job in rows]
    )
    sums: dict[tuple[uuid.UUID, date, str, bool], int] = {}
    for _, charge in pending:
        sums[_group(charge)] = sums.get(_group(charge), 0) + charge.units
    refused = set()
    # Usage rows locked in one order (tenant, day, metric) by every API process, so two
    # batches charging the same tenants cannot deadlock.
    for group, units in sorted(sums.items(), key=lambda item: (str(item[0][0]), *item[0][1:3])):
        tenant_id, day, metric, enforce = group
        if (
            quotas.apply_charge(session, quotas.Charge(tenant_id, day, metric, units, enforce))
            is None
        ):
            refused.add(group)
    if refused:
        session.rollback()
    else:
        session.commit()
    return refused


def _key_order(job: Job) -> tuple[str, str]:
    return (str(job.tenant_id), job.idempotency_key or "")


def _submit_one(session: Session, celery: Celery, request: Submission) -> Outcome:
    try:
        return submit_job(
            session, celery, request.tenant_id, request.kind, request.params,
            idempotency_key=request.idempotency_key, callback_url=request.callback_url,
        )  # fmt: skip
    except SubmissionRefused as exc:
        return exc


def _publish_and_mark(
    session: Session,
    celery: Celery,
    pending: dict[int, tuple[Job, quotas.Charge]],
    connection: Connection | None,
) -> dict[int, Outcome]:
    created = [job for job, _ in pending.values()]
    try:
        publish_jobs(celery, created, connection=connection)
    except BrokerUnavailable as exc:
        return _broker_failed(session, pending, exc)
    for job in created:
        metrics.JOBS_SUBMITTED.labels(kind=job.kind).inc()
    at, marked = mark_queued(session, [job.id for job in created])
    outcomes: dict[int, Outcome] = {}
    for index, (job, _) in pending.items():
        if job.id in marked:
            job.state = JobState.QUEUED.value
            job.queued_at = job.updated_at = at
            outcomes[index] = (job, False)
        else:  # a worker already picked it up: report it as it is now
            outcomes[index] = (jobs.get_job(session, job.id), False)
    return outcomes


def _broker_failed(
    session: Session, pending: dict[int, tuple[Job, quotas.Charge]], exc: BrokerUnavailable
) -> dict[int, Outcome]:
    """Fail every job of a batch the broker did not confirm and refund its charge."""
    session.rollback()
    for job, charge in pending.values():
        _record_unqueued(session, job, charge.day)
    session.commit()
    logger.warning("a batch of %d submissions failed: %s", len(pending), exc)
    return {index: broker_refusal() for index in pending}


def _record_unqueued(session: Session, job: Job, day: date) -> None:
    """A job the broker did not take: failed with the reason, its quota charge refunded.

    Its ``Idempotency-Key`` is freed, so retrying the same request makes a fresh attempt.
    """
    jobs.transition(
        session,
        job.id,
        JobState.FAILED,
        error_code="broker_unavailable",
        error_message=BROKER_FAILED_MESSAGE,
        idempotency_key=None,
    )
    quotas.refund(session, job.tenant_id, job.kind, job.params, day)
    metrics.API_BROKER_UNAVAILABLE.labels(kind=job.kind).inc()


def broker_refusal() -> SubmissionRefused:
    """The refusal of a submission the broker did not take (nothing was queued)."""
    return SubmissionRefused(
        503,
        "broker_unavailable",
        "The job queue is unavailable right now; nothing was queued. Retry shortly.",
        retry_after=BROKER_RETRY_AFTER_SECONDS,
    )
