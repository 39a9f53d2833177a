"""Submitting concurrent requests' jobs together: one transaction, one confirm wait, one mark.

Every request without an ``Idempotency-Key`` hands its job to the batcher and waits for
its own outcome. One writer submits the jobs gathered while the previous batch was
being written (``submissions.submit_many``): their rows and quota charges in one
transaction, their messages on one channel with one wait for the broker's confirms,
and one statement marking them ``queued``. A request still answers only once its job is
committed, confirmed and marked, exactly as when it is submitted alone; a quota or a
broker failure refuses each request the way it would have alone. When the broker fails
a batch, the requests that waited behind it are refused at once (nothing of theirs was
written), so that during an outage every request gets its 503 within one publish timeout.

Requests with an ``Idempotency-Key`` take the single path, which settles key races.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from celery import Celery
from kombu import Connection
from sqlalchemy.orm import Session

from sous_api.deps import run_db
from sous_api.schemas import JobResource
from sous_core import metrics
from sous_core.db.models import Job
from sous_core.submissions import Submission, SubmissionRefused, broker_refusal, submit_many

#: Jobs submitted in one batch at most.
MAX_BATCH = 200

Outcome = JobResource | SubmissionRefused


class SubmissionBatcher:
    """Collects submissions from concurrent requests; one writer submits them in batches."""

    def __init__(self, celery: Celery) -> None:
        self._celery = celery
        # Kept open between batches (connected on first use, reopened if the broker
        # closed it); the writer is the only one using it, from one thread at a time.
        self._connection: Connection = celery.connection_for_write(
            transport_options={"confirm_publish": False}
        )
        self._waiting: list[tuple[Submission, asyncio.Future[JobResource]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.batches = 0

    async def submit(self, submission: Submission) -> JobResource:
        """The new job, ``queued``, once committed, confirmed and marked; raises
        :class:`SubmissionRefused` if it was not accepted."""
        future: asyncio.Future[JobResource] = asyncio.get_running_loop().create_future()
        self._waiting.append((submission, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_batches())
        # Shielded: a client that disconnects must not cancel the submission of its job.
        return await asyncio.shield(future)

    async def _write_batches(self) -> None:
        while self._waiting:
            batch = self._waiting[:MAX_BATCH]
            del self._waiting[:MAX_BATCH]
            try:
                outcomes = await run_db(
                    _submit_all, self._celery, [submission for submission, _ in batch],
                    self._connection,
                )  # fmt: skip
            except Exception as exc:  # each request answers for its own job
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            metrics.API_SUBMISSION_BATCH_SIZE.observe(len(batch))
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if isinstance(outcome, SubmissionRefused):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
            if any(_broker_failed(outcome) for outcome in outcomes):
                self._refuse_waiting()

    def _refuse_waiting(self) -> None:
        """The broker just failed a batch: refuse the requests that waited meanwhile at once
        (nothing of theirs was written) rather than each waiting out another timeout."""
        waiting, self._waiting = self._waiting, []
        for submission, future in waiting:
            if not future.done():
                metrics.API_BROKER_UNAVAILABLE.labels(kind=submission.kind).inc()
                future.set_exception(broker_refusal())

    def close(self) -> None:
        self._connection.release()


def _submit_all(
    session: Session, celery: Celery, submissions: Sequence[Submission], connection: Connection
) -> list[Outcome]:
    return [
        JobResource.from_job(outcome) if isinstance(outcome, Job) else outcome
        for outcome in submit_many(session, celery, submissions, connection)
    ]


def _broker_failed(outcome: Outcome) -> bool:
    return isinstance(outcome, SubmissionRefused) and outcome.code == "broker_unavailable"
