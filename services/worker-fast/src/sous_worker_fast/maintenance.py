"""Maintenance tasks the scheduler sends to the ``maintenance`` queue."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from sous_core import jobs, maintenance, reaper
from sous_core.db.engine import session_scope
from sous_core.db.models import utcnow
from sous_core.enqueue import BrokerUnavailable, confirmed_connection, publish_job
from sous_core.settings import get_settings
from sous_core.states import IllegalTransition, JobState

logger = logging.getLogger("sous.maintenance")


def requeue_stale_pending(app: Celery) -> int:
    """Publish jobs left ``pending`` (the API died between its commit and its publish).

    Each job is published with a confirm, then marked ``queued``; returns how many.
    A job whose message did reach the broker after all may run twice, which every
    task tolerates (each is idempotent), rather than never.
    """
    settings = get_settings()
    requeued = 0
    confirmed = confirmed_connection(app)
    with confirmed, session_scope() as session:
        for job in jobs.stale_pending_jobs(session, settings.pending_requeue_after):
            try:
                publish_job(app, job, connection=confirmed)
            except BrokerUnavailable as exc:
                logger.warning("sweep stopped: %s", exc)
                break
            try:
                jobs.transition(session, job.id, JobState.QUEUED, only_from={JobState.PENDING})
            except IllegalTransition:
                continue
            requeued += 1
            logger.warning(
                "job %s was still pending after %.0fs; published it again",
                job.id,
                settings.pending_requeue_after,
            )
    if requeued:
        logger.info("requeued %d stale pending job(s)", requeued)
    return requeued


def reap_stuck_jobs(app: Celery) -> dict[str, Any]:
    """The reaper, publishing over this worker's connections; then the batch sweep."""
    report = maintenance.jsonable(reaper.reap_stuck_jobs(app, utcnow(), get_settings()))
    with session_scope() as session:
        settled = jobs.settle_unsettled_batches(session)
    if settled:
        report["settled_batches"] = [str(parent_id) for parent_id in settled]
    return report


def run_registered(name: str) -> Any:
    """Run one of the maintenance tasks ``sous maintenance run`` knows, and log its outcome."""
    result = maintenance.jsonable(maintenance.TASKS[name](utcnow()))
    logger.info("maintenance task %s: %s", name, result)
    return result
