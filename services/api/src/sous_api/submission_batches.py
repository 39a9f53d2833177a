"""Submitting concurrent requests' jobs together: one transaction, one confirm wait, one mark.

Every submission (but an upload's) hands its job to the batcher and waits for its own
outcome. A writer submits the jobs gathered while the previous batch was
being written (``submissions.submit_many``); two write at once, so one batch's commit
and confirm wait overlap the next one's work. A batch: its rows and quota charges in one
transaction, their messages on one channel with one wait for the broker's confirms,
and one statement marking them ``queued``. A request still answers only once its job is
committed, confirmed and marked, exactly as when it is submitted alone; a quota or a
broker failure refuses each request the way it would have alone. When the broker fails
a batch, the requests that waited behind it are refused at once (nothing of theirs was
written), so that during an outage every request gets its 503 within one publish timeout.

An ``Idempotency-Key`` already used is answered as a replay; races on a new key are
settled as for a single request (``submissions.submit_many``).
"""

from __future__ import annotations

from collections.abc import Sequence

from celery import Celery
from kombu import Connection
from sqlalchemy.orm import Session

from sous_api.deps import run_db
from sous_api.group_writer import GroupWriter
from sous_api.schemas import JobResource
from sous_core import metrics
from sous_core.submissions import Submission, SubmissionRefused, broker_refusal, submit_many

#: A submission's answer: the job, and whether it replays an earlier request's.
Accepted = tuple[JobResource, bool]


class SubmissionBatcher(GroupWriter[Submission, Accepted]):
    """Submits the jobs of concurrent requests, one transaction and one confirm wait a batch."""

    max_batch = 200
    writers = 2

    def __init__(self, celery: Celery) -> None:
        super().__init__()
        self._celery = celery
        # Broker connections kept open between batches (connected on first use, reopened
        # if the broker closed one); a batch borrows one, so each is used by one thread.
        self._idle_connections: list[Connection] = []

    async def submit(self, submission: Submission) -> Accepted:
        """``(job, replayed)``: a new job ``queued``, once committed, confirmed and marked,
        or a replay; raises :class:`SubmissionRefused` if it was not accepted."""
        return await self.put(submission)

    async def write(self, items: list[Submission]) -> list[Accepted | Exception]:
        metrics.API_SUBMISSION_BATCH_SIZE.observe(len(items))
        connection = self._borrow_connection()
        try:
            return await run_db(_submit_all, self._celery, items, connection)
        finally:
            self._idle_connections.append(connection)

    def after_batch(self, outcomes: list[Accepted | Exception]) -> None:
        if any(_broker_failed(outcome) for outcome in outcomes):
            # Refused at once (nothing of theirs was written) rather than each waiting
            # out another publish timeout.
            self.refuse_waiting(_refuse_unqueued)

    def close(self) -> None:
        for connection in self._idle_connections:
            connection.release()
        self._idle_connections.clear()

    def _borrow_connection(self) -> Connection:
        if self._idle_connections:
            return self._idle_connections.pop()
        return self._celery.connection_for_write(transport_options={"confirm_publish": False})


def _refuse_unqueued(submission: Submission) -> SubmissionRefused:
    metrics.API_BROKER_UNAVAILABLE.labels(kind=submission.kind).inc()
    return broker_refusal()


def _submit_all(
    session: Session, celery: Celery, submissions: Sequence[Submission], connection: Connection
) -> list[Accepted | Exception]:
    return [
        outcome
        if isinstance(outcome, Exception)
        else (JobResource.from_job(outcome[0]), outcome[1])
        for outcome in submit_many(session, celery, submissions, connection)
    ]


def _broker_failed(outcome: Accepted | Exception) -> bool:
    return isinstance(outcome, SubmissionRefused) and outcome.code == "broker_unavailable"
