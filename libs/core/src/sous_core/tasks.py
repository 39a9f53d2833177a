"""Task names, their queues and their payloads: the contract between API, workers and scheduler.

The API enqueues by name and never imports worker code; a worker registers its
functions under these names. Payloads carry ids only, never objects or secrets.
"""

from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict

from sous_core.queues import FAST_QUEUE, HEAVY_QUEUE, MAINTENANCE_QUEUE

FETCH_TASK = "sous.fetch"
FETCH_BATCH_TASK = "sous.fetch_batch"
EMAIL_TASK = "sous.email"
TRANSCODE_TASK = "sous.transcode"
HEAVY_PING_TASK = "sous.heavy.ping"
REQUEUE_STALE_PENDING_TASK = "sous.maintenance.requeue_stale_pending"
REAP_STUCK_JOBS_TASK = "sous.maintenance.reap_stuck_jobs"
RESET_QUOTAS_TASK = "sous.maintenance.reset_quotas"
EXPIRE_KEYS_TASK = "sous.maintenance.expire_keys"
PURGE_JOBS_TASK = "sous.maintenance.purge_jobs"
SWEEP_UPLOADS_TASK = "sous.maintenance.sweep_uploads"


class JobKind:
    FETCH = "fetch"
    FETCH_BATCH = "fetch_batch"
    EMAIL = "email"
    TRANSCODE = "transcode"


#: Which task runs a job of each kind.
TASK_FOR_KIND: dict[str, str] = {
    JobKind.FETCH: FETCH_TASK,
    JobKind.FETCH_BATCH: FETCH_BATCH_TASK,
    JobKind.EMAIL: EMAIL_TASK,
    JobKind.TRANSCODE: TRANSCODE_TASK,
}

#: Which queue each task goes to; a task missing here is refused when published.
TASK_ROUTES: dict[str, str] = {
    FETCH_TASK: FAST_QUEUE,
    FETCH_BATCH_TASK: FAST_QUEUE,
    EMAIL_TASK: FAST_QUEUE,
    TRANSCODE_TASK: HEAVY_QUEUE,
    HEAVY_PING_TASK: HEAVY_QUEUE,
    REQUEUE_STALE_PENDING_TASK: MAINTENANCE_QUEUE,
    REAP_STUCK_JOBS_TASK: MAINTENANCE_QUEUE,
    RESET_QUOTAS_TASK: MAINTENANCE_QUEUE,
    EXPIRE_KEYS_TASK: MAINTENANCE_QUEUE,
    PURGE_JOBS_TASK: MAINTENANCE_QUEUE,
    SWEEP_UPLOADS_TASK: MAINTENANCE_QUEUE,
}


class JobPayload(BaseModel):
    """Keyword arguments of every job task: the id, nothing else."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: uuid.UUID

    def as_kwargs(self) -> dict[str, str]:
        return {"job_id": str(self.job_id)}
