"""Email jobs: sent at most once, even when the task is redelivered or retried."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from sous_core import metrics, telemetry
from sous_core.email_params import EmailParams
from sous_core.errors import JobError
from sous_core.job_runner import JobContext
from sous_core.settings import get_settings
from sous_worker_fast.mailing import SmtpConfig, send_email

logger = logging.getLogger("sous.email")

T = TypeVar("T")


def run_to_completion(work: Callable[[], T]) -> T:
    """Run ``work`` so that killing the calling greenlet cannot cut it short.

    Celery cancels a gevent worker's running tasks when its broker connection drops (their
    messages will be redelivered). Killed between the SMTP server's acceptance and the
    checkpoint that records it, an email task would send again on redelivery. Here the
    send and its checkpoint run in a greenlet of their own: a kill waits for them to finish
    (bounded by the SMTP timeouts), so the redelivered task finds the checkpoint.
    Outside a gevent worker ``work`` just runs.
    """
    try:
        from gevent import GreenletExit, spawn
        from gevent.monkey import is_module_patched
    except ImportError:  # pragma: no cover - gevent is a dependency of this worker
        return work()
    if not is_module_patched("socket"):
        return work()
    greenlet = spawn(contextvars.copy_context().run, work)
    try:
        return greenlet.get()
    except GreenletExit:
        logger.warning("email task cancelled mid-send; letting the send and its record finish")
        greenlet.join()
        raise


def run_email(context: JobContext) -> dict[str, Any]:
    """Send the job's email, unless an earlier attempt already completed the SMTP transaction.

    The mail server's acceptance is recorded on the job (a checkpoint) before the task
    is acknowledged, so a worker dying after the send does not send it again.
    """
    if context.result and context.result.get("smtp_completed"):
        logger.warning(
            "job %s: the email was already sent (message %s); not sending it again",
            context.job_id,
            context.result.get("message_id"),
        )
        return context.result
    params = context.params_as(EmailParams)
    config = SmtpConfig.from_settings(get_settings())
    with telemetry.outbound_span(
        "SMTP send",
        context.job_id,
        **{"server.address": config.host, "server.port": config.port},
    ) as span:
        try:
            result = run_to_completion(
                lambda: send_email(
                    params, config, job_id=str(context.job_id), on_sent=context.checkpoint
                )
            )
        except JobError as exc:
            telemetry.mark_error(span, exc.code)
            raise
    metrics.EMAILS_SENT.inc()
    metrics.EMAIL_RECIPIENTS_REFUSED.inc(len(result.get("refused") or {}))
    return result
