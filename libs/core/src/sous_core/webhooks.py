"""Webhooks: the outbox row written when a job finishes, claiming due rows, and signatures.

A job with a ``callback_url`` gets a :class:`WebhookDelivery` row in the same transaction
that makes it terminal. Fast workers claim due rows (a lease, so two workers never POST
the same delivery at once and a dead worker's claim expires), POST the job, and record
the outcome. The job's own state never changes because of its webhook.

Signatures follow a widely used scheme: ``Sous-Signature: t=<unix time>,v1=<hex>``, where
``v1`` is HMAC-SHA256 of ``"<t>." + body`` keyed with the tenant's webhook secret.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import random
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from sous_core.db.models import Tenant, WebhookDelivery, WebhookState, utcnow

SIGNATURE_HEADER = "Sous-Signature"
#: Receivers should refuse signatures older than this many seconds (replays).
DEFAULT_TOLERANCE_SECONDS = 300


class FinishedJob(Protocol):
    """What a finished job's webhook needs of it (a ``Job``, or a row returned by an update)."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def tenant_id(self) -> uuid.UUID: ...
    @property
    def callback_url(self) -> str | None: ...


def enqueue_delivery(session: Session, job: FinishedJob) -> None:
    """Add the outbox row for a job that just finished (caller commits)."""
    if job.callback_url is None:
        return
    session.add(WebhookDelivery(job_id=job.id, tenant_id=job.tenant_id, url=job.callback_url))


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The ``Sous-Signature`` header value for ``body``."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def verify(
    secret: str,
    body: bytes,
    header: str,
    *,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """Whether ``header`` is a valid, recent signature of ``body`` (what a receiver does)."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance:
        return False
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, fields.get("v1", ""))


def retry_delay(attempts: int, base: float, cap: float) -> float:
    """Seconds before the next attempt: exponential, capped, with jitter (50 to 100 %)."""
    ceiling = min(cap, base * 2 ** max(0, attempts - 1))
    return max(0.0, ceiling * random.uniform(0.5, 1.0))


@dataclass(frozen=True)
class ClaimedDelivery:
    id: uuid.UUID
    job_id: uuid.UUID
    url: str
    attempt: int
    secret: str


def claim_due(
    session: Session, *, limit: int, lease_seconds: float, now: datetime | None = None
) -> list[ClaimedDelivery]:
    """Take up to ``limit`` deliveries that are due, leasing them for ``lease_seconds``.

    PostgreSQL skips rows another worker has locked; the lease keeps a row away from
    other workers while its POST runs, and frees it if that worker dies.
    """
    now = now or utcnow()
    due = (
        select(WebhookDelivery.id)
        .where(
            WebhookDelivery.state == WebhookState.PENDING,
            WebhookDelivery.next_attempt_at <= now,
            or_(WebhookDelivery.locked_until.is_(None), WebhookDelivery.locked_until <= now),
        )
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = list(session.execute(due).scalars())
    if not ids:
        return []
    rows = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id.in_(ids))
        .values(
            locked_until=now + timedelta(seconds=lease_seconds),
            attempts=WebhookDelivery.attempts + 1,
        )
        .returning(
            WebhookDelivery.id,
            WebhookDelivery.job_id,
            WebhookDelivery.url,
            WebhookDelivery.attempts,
            WebhookDelivery.tenant_id,
        )
        .execution_options(synchronize_session=False)
    ).all()
    secrets = dict(
        session.execute(
            select(Tenant.id, Tenant.webhook_secret).where(
                Tenant.id.in_({row.tenant_id for row in rows})
            )
        ).all()
    )
    return [
        ClaimedDelivery(
            id=row.id,
            job_id=row.job_id,
            url=row.url,
            attempt=row.attempts,
            secret=secrets[row.tenant_id],
        )
        for row in rows
    ]


def record_success(session: Session, delivery_id: uuid.UUID, status_code: int) -> None:
    now = utcnow()
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id)
        .values(
            state=WebhookState.DELIVERED,
            last_status_code=status_code,
            last_error=None,
            locked_until=None,
            finished_at=now,
        )
        .execution_options(synchronize_session=False)
    )


def record_failure(
    session: Session,
    delivery: ClaimedDelivery,
    error: str,
    *,
    status_code: int | None,
    max_attempts: int,
    backoff: float,
    backoff_max: float,
    permanent: bool = False,
) -> bool:
    """Record a failed attempt; schedule the next one, or give up. True when given up."""
    now = utcnow()
    give_up = permanent or delivery.attempt >= max_attempts
    values: dict[str, object] = {
        "last_status_code": status_code,
        "last_error": error[:2000],
        "locked_until": None,
    }
    if give_up:
        values.update(state=WebhookState.FAILED, finished_at=now)
    else:
        delay = retry_delay(delivery.attempt, backoff, backoff_max)
        values["next_attempt_at"] = now + timedelta(seconds=math.ceil(delay * 1000) / 1000)
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery.id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return give_up


def deliveries_for(session: Session, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, WebhookDelivery]:
    """The webhook deliveries of these jobs, by job id (jobs without one are absent)."""
    if not job_ids:
        return {}
    rows = session.execute(
        select(WebhookDelivery).where(WebhookDelivery.job_id.in_(job_ids))
    ).scalars()
    return {row.job_id: row for row in rows}
