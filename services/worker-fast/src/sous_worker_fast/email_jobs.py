"""Email jobs: sent at most once, even when the task is redelivered or retried."""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sous_core import jobs, metrics, telemetry
from sous_core.db.engine import session_scope
from sous_core.email_params import EmailParams
from sous_core.errors import JobCancelled, JobError, PermanentJobError, TransientJobError
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
    (bounded by the SMTP timeouts), so the redelivered task finds the checkpoint — or,
    while it is still sending, finds the job running with a live heartbeat and waits.
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
        # A second cancel (another connection loss) must not end the wait either: the
        # job stays watched, and heartbeating, until the send and its record are done.
        while not greenlet.dead:
            try:
                greenlet.join()
            except GreenletExit:
                continue
        raise


#: Seconds past the SMTP timeout that an attempt finding an earlier one's send in doubt
#: waits for that attempt to record how it ended.
IN_DOUBT_MARGIN = 5.0
#: Seconds between two looks at the job while waiting.
IN_DOUBT_POLL = 0.5


def run_email(context: JobContext) -> dict[str, Any]:
    """Send the job's email, unless an earlier attempt already completed the SMTP transaction.

    The mail server's acceptance is recorded on the job (a checkpoint) before the task
    is acknowledged, so a worker dying after the send does not send it again. So is the
    moment the message is handed over (just before the line that ends it): an attempt
    that finds an earlier one's send in that state waits for it to end; if it never says
    how it ended, the email may have gone out and is not sent again (``delivery_uncertain``).
    """
    config = SmtpConfig.from_settings(get_settings())
    if context.result and context.result.get("smtp_in_doubt"):
        context.result = _await_earlier_send(context, config)
    if context.result and context.result.get("smtp_completed"):
        logger.warning(
            "job %s: the email was already sent (message %s); not sending it again",
            context.job_id,
            context.result.get("message_id"),
        )
        return context.result
    params = context.params_as(EmailParams)
    with telemetry.outbound_span(
        "SMTP send",
        context.job_id,
        **{"server.address": config.host, "server.port": config.port},
    ) as span:
        try:
            result = run_to_completion(
                lambda: send_email(
                    params,
                    config,
                    job_id=str(context.job_id),
                    on_sent=context.checkpoint,
                    on_doubt=lambda mark: _record_doubt(context, mark),
                )
            )
        except JobError as exc:
            telemetry.mark_error(span, exc.code)
            raise
    metrics.EMAILS_SENT.inc()
    metrics.EMAIL_RECIPIENTS_REFUSED.inc(len(result.get("refused") or {}))
    return result


def _record_doubt(context: JobContext, mark: dict[str, Any]) -> None:
    """Record the hand-over (or a refusal after it) before the message is ended.

    The hand-over is claimed for this attempt: one that fell silent (a frozen worker) and
    was taken over must not end its message beside the attempt that replaced it.
    """
    try:
        context.checkpoint(mark, claim=bool(mark.get("smtp_in_doubt")))
    except PermanentJobError as exc:
        if exc.code != "checkpoint_failed":
            raise
        # Raised before the end of the message: the server drops it, nothing was sent.
        raise TransientJobError(
            "database_unavailable",
            "The job database was unreachable to record the send; the email was not sent.",
        ) from None


def _await_earlier_send(context: JobContext, config: SmtpConfig) -> dict[str, Any] | None:
    """Wait for the attempt that handed this email over to record how its send ended.

    Returns what it recorded (``smtp_completed``, or a refusal: send again). Past the
    SMTP timeout (that attempt gave up on the server's answer) plus a margin, or if the
    job ended without saying, the email may have been delivered: fail, not send twice.
    """
    mark = context.result or {}
    handed_over = datetime.fromisoformat(str(mark.get("handed_over_at")))
    deadline = handed_over + timedelta(seconds=config.timeout + IN_DOUBT_MARGIN)
    logger.warning(
        "job %s: an earlier attempt handed message %s to the SMTP server at %s and has not "
        "said whether it was accepted; waiting for it until %s",
        context.job_id,
        mark.get("message_id"),
        mark.get("handed_over_at"),
        deadline.isoformat(timespec="seconds"),
    )
    while True:
        with session_scope() as session:
            state, result = jobs.state_and_result(session, context.job_id)
        if result and not result.get("smtp_in_doubt"):
            return result
        if state.is_terminal or datetime.now(UTC) >= deadline:
            break
        if context.should_stop():
            raise JobCancelled(str(context.job_id))
        time.sleep(IN_DOUBT_POLL)
    raise PermanentJobError(
        "delivery_uncertain",
        f"An earlier attempt handed the email (Message-ID {mark.get('message_id')}) to the "
        "SMTP server and was interrupted before the server answered: it may have been "
        "delivered. It was not sent again; check with the recipient before resubmitting.",
    )
