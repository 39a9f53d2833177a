"""The fast worker's Celery app (run with ``-P gevent -Q fast,maintenance``)."""

from __future__ import annotations

from typing import Any

from celery.signals import setup_logging
from pydantic import ValidationError

from sous_core.celery_app import create_celery_app
from sous_core.dead_letters import DeadLetterWatcher
from sous_core.errors import PermanentJobError
from sous_core.job_runner import JobContext, register_job_task
from sous_core.logs import configure_logging
from sous_core.params import FetchParams
from sous_core.settings import get_settings
from sous_core.tasks import FETCH_TASK, REQUEUE_STALE_PENDING_TASK
from sous_worker_fast import green_loop, maintenance
from sous_worker_fast.fetching import FetchLimits, fetch_url

green_loop.install()
app = create_celery_app("sous-worker-fast")
# Fast workers also fail the jobs whose messages were dead-lettered (any queue's).
app.steps["consumer"].add(DeadLetterWatcher)


@setup_logging.connect
def _logging(**_kwargs: Any) -> None:
    configure_logging()


def run_fetch(context: JobContext) -> dict[str, Any]:
    """Fetch the job's URL and return what was received (status, size, sha256, timing)."""
    try:
        params = FetchParams.model_validate(context.params)
    except ValidationError as exc:
        raise PermanentJobError(
            "invalid_params", f"The job's parameters are invalid: {exc}"
        ) from None
    settings = get_settings()
    outcome = fetch_url(
        params.url,
        limits=FetchLimits(
            timeout_seconds=settings.fetch_timeout,
            max_bytes=settings.fetch_max_bytes,
            max_redirects=settings.fetch_max_redirects,
        ),
        allow_networks=settings.fetch_allowed_networks,
        should_stop=context.should_stop,
    )
    return outcome.as_result()


fetch_task = register_job_task(app, FETCH_TASK, run_fetch)


@app.task(name=REQUEUE_STALE_PENDING_TASK)
def requeue_stale_pending_task() -> int:
    """Publish jobs stuck in ``pending``; run every few minutes by the scheduler."""
    return maintenance.requeue_stale_pending(app)
