"""Fetch jobs: one URL, or a batch fanned out into one child fetch job per URL."""

from __future__ import annotations

import functools
import logging
import uuid
from typing import Any

from celery import Celery

from sous_core import batches, jobs, metrics, storage, telemetry
from sous_core.db.engine import session_scope
from sous_core.enqueue import BrokerUnavailable, publish_jobs
from sous_core.errors import JobError, TransientJobError
from sous_core.job_runner import AWAIT_CHILDREN, AwaitChildren, JobContext
from sous_core.params import FetchBatchParams, FetchParams
from sous_core.settings import get_settings
from sous_core.states import JobState
from sous_core.tasks import JobKind
from sous_fetch.fetching import FetchLimits, HostLimiter, fetch_url

logger = logging.getLogger("sous.fetch")

#: Children published (and then marked queued) per round trip to the database.
PUBLISH_CHUNK = 100


@functools.cache
def host_limiter() -> HostLimiter:
    """This process's per-host limit, shared by every fetch it runs."""
    return HostLimiter(get_settings().fetch_per_host_concurrency)


def run_fetch(context: JobContext) -> dict[str, Any]:
    """Fetch the job's URL: status, headers, size, sha256, timing; the body if asked."""
    params = context.params_as(FetchParams)
    settings = get_settings()
    fetch = functools.partial(
        fetch_url,
        params.url,
        limits=FetchLimits.from_settings(settings),
        allow_networks=settings.fetch_allowed_networks,
        should_stop=context.should_stop,
        limiter=host_limiter(),
    )
    with telemetry.outbound_span("GET", context.job_id, **{"url.full": params.url}) as span:
        try:
            if not params.store_body:
                outcome = fetch()
            else:
                path = storage.output_path(settings.storage_dir, context.job_id)
                with storage.atomic_writer(path) as sink:
                    outcome = fetch(body_sink=sink)
        except JobError as exc:
            metrics.FETCHES.labels(outcome="error").inc()
            telemetry.mark_error(span, exc.code)
            raise
        if span.is_recording():
            span.set_attribute("http.response.status_code", outcome.status_code)
            span.set_attribute("http.response.body.size", outcome.size_bytes)
    metrics.FETCHES.labels(outcome=f"{outcome.status_code // 100}xx").inc()
    metrics.FETCH_BYTES.inc(outcome.size_bytes)
    result = outcome.as_result()
    if not params.store_body:
        return result
    result["output"] = {"size_bytes": outcome.size_bytes, "content_type": outcome.content_type}
    return result


def run_fetch_batch(app: Celery, context: JobContext) -> AwaitChildren:
    """Fan a batch out into child fetch jobs; the last child to finish finishes the batch."""
    params = context.params_as(FetchBatchParams)
    with session_scope() as session:
        parent = jobs.get_job(session, context.job_id)
        total = batches.create_children(session, parent, JobKind.FETCH, params.child_params())
    published = _publish_pending_children(app, context.job_id)
    logger.info("batch %s: %d children, %d published now", context.job_id, total, published)
    with session_scope() as session:
        if jobs.is_cancel_requested(session, context.job_id):
            jobs.cancel_children(session, context.job_id)
        elif batches.all_finished(session, context.job_id):
            # Every child finished while the batch was still fanning out (or retrying).
            jobs.finish_batch(session, context.job_id)
    return AWAIT_CHILDREN


def _publish_pending_children(app: Celery, parent_id: uuid.UUID) -> int:
    """Publish children not yet published (all of them, unless this is a redelivery)."""
    with session_scope() as session:
        pending = batches.children_in(session, parent_id, {JobState.PENDING})
    published = 0
    for start in range(0, len(pending), PUBLISH_CHUNK):
        chunk = pending[start : start + PUBLISH_CHUNK]
        try:
            publish_jobs(app, chunk)  # one confirm wait for the chunk
        except BrokerUnavailable as exc:
            raise TransientJobError(
                "broker_unavailable", f"Publishing the batch's jobs failed: {exc}"
            ) from None
        with session_scope() as session:
            jobs.mark_queued(session, [child.id for child in chunk])
        published += len(chunk)
    return published
