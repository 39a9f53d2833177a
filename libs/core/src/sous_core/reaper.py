"""The stuck-job reaper: running jobs whose worker went silent are re-queued once, then failed.

Workers heartbeat every running job (``sous_core.cancel_watch``). A job whose heartbeat
stopped for longer than its kind allows lost its worker in a way RabbitMQ did not
notice or could not fix: a frozen process, a message acknowledged but never finished.
The first time, the job is published again; the second time it fails with a clear
reason rather than loop forever.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from celery import Celery
from kombu import Connection
from sqlalchemy.orm import Session

from sous_core import jobs
from sous_core.db.engine import session_scope
from sous_core.db.models import Job
from sous_core.enqueue import BrokerUnavailable, confirmed_connection, publish_job
from sous_core.settings import Settings
from sous_core.states import IllegalTransition, JobState

logger = logging.getLogger("sous.maintenance")

#: Stuck jobs handled per transaction.
BATCH = 50


@dataclass
class ReapReport:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    unpublished: list[str] = field(default_factory=list)


def reap_stuck_jobs(app: Celery, now: datetime, settings: Settings) -> ReapReport:
    """Re-queue (once) or fail every running job whose worker has been silent too long."""
    report = ReapReport()
    silence = settings.reaper_silence_by_kind
    with confirmed_connection(app) as connection:
        while True:
            with session_scope() as session:
                stuck = jobs.stuck_jobs(
                    session, now, silence, settings.reaper_default_silence, limit=BATCH
                )
                for job in stuck:
                    seconds = silence.get(job.kind, settings.reaper_default_silence)
                    _reap(session, app, connection, job, seconds, report)
            if len(stuck) < BATCH or report.unpublished:
                break
    if report.requeued or report.failed:
        logger.warning(
            "reaper: re-queued %d stuck job(s), failed %d", len(report.requeued), len(report.failed)
        )
    return report


def _reap(
    session: Session,
    app: Celery,
    connection: Connection,
    job: Job,
    seconds: float,
    report: ReapReport,
) -> None:
    silent = f"its worker sent no heartbeat for over {seconds:g} seconds"
    if job.reaped > 0:
        jobs.transition(
            session,
            job.id,
            JobState.FAILED,
            only_from={JobState.RUNNING},
            error_code="stuck",
            error_message=f"The job was stopped: {silent}, again after being re-queued once.",
        )
        report.failed.append(str(job.id))
        logger.warning("job %s failed: %s, again after a re-queue", job.id, silent)
        return
    savepoint = session.begin_nested()
    try:
        jobs.transition(
            session,
            job.id,
            JobState.QUEUED,
            only_from={JobState.RUNNING},
            reaped=1,
            error_code="worker_silent",
            error_message=f"Re-queued once: {silent}.",
        )
        # Published while the row is still locked: a worker that takes the message at
        # once waits for this transaction, then finds the job queued.
        publish_job(app, job, connection=connection)
    except (IllegalTransition, BrokerUnavailable) as exc:
        savepoint.rollback()
        if isinstance(exc, BrokerUnavailable):
            report.unpublished.append(str(job.id))
            logger.warning("job %s not re-queued (it stays running): %s", job.id, exc)
        return
    savepoint.commit()
    report.requeued.append(str(job.id))
    logger.warning("job %s re-queued: %s", job.id, silent)
