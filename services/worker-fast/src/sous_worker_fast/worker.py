"""The fast worker's Celery app (run with ``-P gevent -Q fast,maintenance``)."""

from __future__ import annotations

import functools
from typing import Any

from sous_core.celery_app import create_celery_app
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
from sous_worker_fast import green_loop, maintenance
from sous_worker_fast.email_jobs import run_email
from sous_worker_fast.fetch_jobs import run_fetch, run_fetch_batch
from sous_worker_fast.webhook_dispatch import WebhookDispatcher

__all__ = ["app", "run_email", "run_fetch"]

green_loop.install()
app = create_celery_app("sous-worker-fast")
observe_worker("sous-worker-fast", prefork=False)
# Fast workers also fail the jobs whose messages were dead-lettered (any queue's),
app.steps["consumer"].add(DeadLetterWatcher)
# and POST finished jobs to their webhooks.
app.steps["worker"].add(WebhookDispatcher)


fetch_task = register_job_task(app, FETCH_TASK, run_fetch)
fetch_batch_task = register_job_task(app, FETCH_BATCH_TASK, functools.partial(run_fetch_batch, app))
email_task = register_job_task(app, EMAIL_TASK, run_email)


@app.task(name=REQUEUE_STALE_PENDING_TASK)
def requeue_stale_pending_task() -> int:
    """Publish jobs stuck in ``pending``; run every few minutes by the scheduler."""
    return maintenance.requeue_stale_pending(app)


@app.task(name=REAP_STUCK_JOBS_TASK)
def reap_stuck_jobs_task() -> Any:
    """Re-queue once, then fail, running jobs whose worker stopped sending heartbeats."""
    return maintenance.reap_stuck_jobs(app)


@app.task(name=RESET_QUOTAS_TASK)
def reset_quotas_task() -> Any:
    """Start the day's quotas afresh (drop old usage counters)."""
    return maintenance.run_registered("reset-quotas")


@app.task(name=EXPIRE_KEYS_TASK)
def expire_keys_task() -> Any:
    """Revoke expired API keys; report those expiring soon."""
    return maintenance.run_registered("expire-keys")


@app.task(name=PURGE_JOBS_TASK)
def purge_jobs_task() -> Any:
    """Delete finished jobs and their outputs past the retention period; VACUUM ANALYZE."""
    return maintenance.run_registered("purge-jobs")


@app.task(name=SWEEP_UPLOADS_TASK)
def sweep_uploads_task() -> Any:
    """Delete uploads that no unfinished transcode needs."""
    return maintenance.run_registered("sweep-uploads")
