"""POST finished jobs to their ``callback_url``: a loop in every fast worker process.

Deliveries come from the outbox the job table fills (``sous_core.webhooks``). Each fast
worker claims the due ones with a lease, POSTs each in its own green thread, and
records the outcome; failures are retried with backoff until the attempts run out.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import bootsteps

from sous_core import jobs, metrics, telemetry, webhooks
from sous_core.db.engine import session_scope
from sous_core.errors import JobError
from sous_core.resources import JobResource
from sous_core.settings import get_settings
from sous_fetch.fetching import post_json

logger = logging.getLogger("sous.webhooks")

#: Webhooks one worker process POSTs at once.
MAX_IN_FLIGHT = 20


def deliver(delivery: webhooks.ClaimedDelivery) -> bool:
    """POST one claimed delivery and record how it went; True when delivered."""
    settings = get_settings()
    with session_scope() as session:
        job = jobs.get_job(session, delivery.job_id)
        body = JobResource.from_job(job).model_dump_json().encode()
        state = job.state
    headers = {
        webhooks.SIGNATURE_HEADER: webhooks.sign(delivery.secret, body),
        "Sous-Event": f"job.{state}",
        "Sous-Delivery": str(delivery.id),
        "Sous-Delivery-Attempt": str(delivery.attempt),
    }
    status_code: int | None = None
    permanent = False
    with telemetry.outbound_span(
        "webhook POST", delivery.job_id, **{"url.full": delivery.url}
    ) as span:
        try:
            outcome = post_json(
                delivery.url,
                body,
                headers=headers,
                timeout_seconds=settings.webhook_timeout,
                allow_networks=settings.fetch_allowed_networks,
            )
        except JobError as exc:
            error = exc.message
            permanent = not exc.transient
            telemetry.mark_error(span, exc.code)
        else:
            status_code = outcome.status_code
            if span.is_recording():
                span.set_attribute("http.response.status_code", status_code)
            if 200 <= status_code < 300:
                with session_scope() as session:
                    webhooks.record_success(session, delivery.id, status_code)
                metrics.WEBHOOK_DELIVERIES.labels(outcome="delivered").inc()
                logger.info("webhook of job %s delivered (%d)", delivery.job_id, status_code)
                return True
            error = f"{delivery.url} answered {status_code}: {outcome.response_excerpt}"
            error = error.rstrip(": ")
            telemetry.mark_error(span, f"status {status_code}")
    with session_scope() as session:
        gave_up = webhooks.record_failure(
            session,
            delivery,
            error,
            status_code=status_code,
            max_attempts=settings.webhook_max_attempts,
            backoff=settings.webhook_backoff,
            backoff_max=settings.webhook_backoff_max,
            permanent=permanent,
        )
    metrics.WEBHOOK_DELIVERIES.labels(outcome="gave_up" if gave_up else "retry").inc()
    if gave_up:
        logger.warning(
            "webhook of job %s failed for good after %d attempt(s): %s",
            delivery.job_id,
            delivery.attempt,
            error,
        )
    else:
        logger.info(
            "webhook of job %s attempt %d failed: %s", delivery.job_id, delivery.attempt, error
        )
    return False


class WebhookDispatcher(bootsteps.StartStopStep):
    """Worker bootstep running the claim-and-deliver loop while the worker runs."""

    label = "Webhook dispatcher"

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._in_flight = 0
        self._thread: threading.Thread | None = None

    def start(self, parent: Any) -> None:
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
        self._thread.start()

    def stop(self, parent: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        settings = get_settings()
        lease = settings.webhook_timeout * 3 + 30
        while not self._stop.is_set():
            with self._lock:
                free = MAX_IN_FLIGHT - self._in_flight
            claimed: list[webhooks.ClaimedDelivery] = []
            if free > 0:
                try:
                    with session_scope() as session:
                        claimed = webhooks.claim_due(session, limit=free, lease_seconds=lease)
                except Exception:
                    logger.exception("claiming due webhooks failed; trying again shortly")
            for delivery in claimed:
                with self._lock:
                    self._in_flight += 1
                threading.Thread(target=self._deliver, args=(delivery,), daemon=True).start()
            if len(claimed) < free or free <= 0:
                self._stop.wait(settings.webhook_poll_interval)

    def _deliver(self, delivery: webhooks.ClaimedDelivery) -> None:
        try:
            deliver(delivery)
        except Exception:
            # The lease runs out and another attempt follows; nothing is lost.
            logger.exception("delivering the webhook of job %s failed", delivery.job_id)
        finally:
            with self._lock:
                self._in_flight -= 1
