"""The fast worker's Celery app (run with ``-P gevent -Q fast,maintenance``)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from celery import Task, signals

from sous_core import jobs, ticks
from sous_core.celery_app import create_celery_app
from sous_core.db.models import utcnow
from sous_core.dead_letters import DeadLetterWatcher
from sous_core.job_runner import register_job_task
from sous_core.observability import observe_worker
from sous_core.tasks import (
    EMAIL_TASK,
    EXPIRE_KEYS_TASK,
    FETCH_BATCH_TASK,
    FETCH_TASK,
    PURGE_JOBS_TASK,
    REAP_STUCK_JOBS_TASK,
    REQUEUE_STALE_PENDING_TASK,
    RESET_QUOTAS_TASK,
    SWEEP_UPLOADS_TASK,
)
from sous_worker_fast import green_imports, green_loop, maintenance
from sous_worker_fast.coalesced_settling import CoalescedSettler
from sous_worker_fast.email_jobs import run_email
from sous_worker_fast.fetch_jobs import run_fetch, run_fetch_batch
from sous_worker_fast.webhook_dispatch import WebhookDispatcher

__all__ = ["app", "run_email", "run_fetch"]

logger = logging.getLogger("sous.maintenance")

green_imports.rebind()
green_loop.install()
app = create_celery_app("sous-worker-fast")


@signals.worker_init.connect
def _coalesce_batch_recounts(**_: Any) -> None:
    """The gevent pool finishes many children of one batch at once: one recount for several.

    Installed when a worker starts, not on import (tests import this module in processes
    that run no greenlet hub).
    """
    jobs.defer_batch_settling(CoalescedSettler().request)


observe_worker("sous-worker-fast", prefork=False)
# Fast workers also fail the jobs whose messages were dead-lettered (any queue's),
app.steps["consumer"].add(DeadLetterWatcher)
# and POST finished jobs to their webhooks.
app.steps["worker"].add(WebhookDispatcher)


fetch_task = register_job_task(app, FETCH_TASK, run_fetch)
fetch_batch_task = register_job_task(app, FETCH_BATCH_TASK, functools.partial(run_fetch_batch, app))
email_task = register_job_task(app, EMAIL_TASK, run_email)


def maintenance_task(name: str) -> Callable[[Callable[[], Any]], Any]:
    """Register a maintenance task that skips a stale tick (the next tick replaces it)."""

    def register(work: Callable[[], Any]) -> Any:
        @app.task(name=name, bind=True)
        @functools.wraps(work)
        def run(task: Task) -> Any:
            if ticks.is_stale(task.request, utcnow()):
                logger.info("%s: tick %s is stale; skipped", name, task.request.get("sous_tick"))
                return {"skipped": "stale tick"}
            return work()

        return run

    return register


@maintenance_task(REQUEUE_STALE_PENDING_TASK)
def requeue_stale_pending_task() -> int:
    """Publish jobs stuck in ``pending``; run every few minutes by the scheduler."""
    return maintenance.requeue_stale_pending(app)


@maintenance_task(REAP_STUCK_JOBS_TASK)
def reap_stuck_jobs_task() -> Any:
    """Re-queue once, then fail, running jobs whose worker stopped sending heartbeats."""
    return maintenance.reap_stuck_jobs(app)


@maintenance_task(RESET_QUOTAS_TASK)
def reset_quotas_task() -> Any:
    """Start the day's quotas afresh (drop old usage counters)."""
    return maintenance.run_registered("reset-quotas")


@maintenance_task(EXPIRE_KEYS_TASK)
def expire_keys_task() -> Any:
    """Revoke expired API keys; report those expiring soon."""
    return maintenance.run_registered("expire-keys")


@maintenance_task(PURGE_JOBS_TASK)
def purge_jobs_task() -> Any:
    """Delete finished jobs and their outputs past the retention period; VACUUM ANALYZE."""
    return maintenance.run_registered("purge-jobs")


@maintenance_task(SWEEP_UPLOADS_TASK)
def sweep_uploads_task() -> Any:
    """Delete uploads that no unfinished transcode needs."""
    return maintenance.run_registered("sweep-uploads")
