"""Email jobs: sent at most once, even when the task is redelivered or retried."""

from __future__ import annotations

import logging
from typing import Any

from sous_core import metrics, telemetry
from sous_core.email_params import EmailParams
from sous_core.errors import JobError
from sous_core.job_runner import JobContext
from sous_core.settings import get_settings
from sous_worker_fast.mailing import SmtpConfig, send_email

logger = logging.getLogger("sous.email")


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
            result = send_email(
                params, config, job_id=str(context.job_id), on_sent=context.checkpoint
            )
        except JobError as exc:
            telemetry.mark_error(span, exc.code)
            raise
    metrics.EMAILS_SENT.inc()
    metrics.EMAIL_RECIPIENTS_REFUSED.inc(len(result.get("refused") or {}))
    return result
