"""Per-tenant daily quotas: a limit per metric, usage counted per UTC day.

A job is charged when it is submitted, in the transaction that creates its row: one
conditional upsert adds its units to today's usage only if that keeps usage within the
limit, so concurrent submissions can never overshoot it. No limit row means unlimited
(usage is still counted). A new UTC day has no usage row yet, so it starts at zero.

    charge(session, tenant_id, "fetch_batch", {"urls": [a, b, c]}, now)  # 3 x jobs:fetch
    add_usage(session, tenant_id, "transcode_input_minutes", 12, now)     # after probing
"""

from __future__ import annotations

import functools
import logging
import math
import uuid
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, NamedTuple, cast

from sqlalchemy import CursorResult, Integer, bindparam, case, delete, func, select, true, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

# The module, not the name: ``submissions`` imports this module in turn.
from sous_core import submissions
from sous_core.db.models import TenantQuota, TenantUsage, utcnow

logger = logging.getLogger("sous.quotas")

#: Minutes of input video transcoded; charged by the transcode worker after probing.
TRANSCODE_INPUT_MINUTES = "transcode_input_minutes"
#: The metric each job kind counts against; a batch fetch counts one per URL.
JOB_METRICS: dict[str, str] = {
    "fetch": "jobs:fetch",
    "fetch_batch": "jobs:fetch",
    "email": "jobs:email",
    "transcode": "jobs:transcode",
}
#: Every metric a quota can be set on.
METRICS: tuple[str, ...] = ("jobs:fetch", "jobs:email", "jobs:transcode", TRANSCODE_INPUT_MINUTES)
#: Days of usage ``prune_usage`` keeps before today by default.
USAGE_KEEP_DAYS = 7


class QuotaStatus(NamedTuple):
    """One metric of a tenant: its daily limit (None: unlimited) and today's usage."""

    metric: str
    daily_limit: int | None
    used: int


def check_metric(metric: str) -> str:
    """``metric`` if a quota can be set on it; ValueError naming the known ones otherwise."""
    if metric not in METRICS:
        raise ValueError(f"unknown quota metric {metric!r}; known: {', '.join(METRICS)}")
    return metric


def utc_day(now: datetime) -> date:
    """The UTC day usage at ``now`` is counted on."""
    return now.astimezone(UTC).date()


def next_reset(now: datetime) -> datetime:
    """The next UTC midnight after ``now``, when daily usage starts from zero."""
    return datetime.combine(utc_day(now) + timedelta(days=1), time(0), UTC)


def units_of(kind: str, params: dict[str, Any]) -> tuple[str, int]:
    """The metric a job of ``kind`` counts against, and how many units it takes."""
    try:
        metric = JOB_METRICS[kind]
    except KeyError:
        raise ValueError(f"job kind {kind!r} has no quota metric; add it to JOB_METRICS") from None
    if kind == "fetch_batch":
        return metric, len(params["urls"])
    return metric, 1


class Charge(NamedTuple):
    """What a job will take from its tenant's quota, once the checks without locks passed."""

    tenant_id: uuid.UUID
    day: date
    metric: str
    units: int
    #: Whether the charge is refused past the tenant's limit (False: usage only counted).
    enforce: bool = True


def prepare_charge(
    session: Session, tenant_id: uuid.UUID, kind: str, params: dict[str, Any], now: datetime
) -> Charge:
    """The charge a job will make; nothing is read or locked for most kinds.

    The charge itself is :func:`apply_charge`, which reads the limit and refuses what
    does not fit in the same statement. A transcode is refused here, up front, once the
    tenant's input minutes are spent (they are only known, and charged, after probing).
    """
    day = utc_day(now)
    if kind == "transcode":
        # The minutes are only known after probing; refuse once they are spent.
        limit = _limit(session, tenant_id, TRANSCODE_INPUT_MINUTES)
        used = _used(session, tenant_id, day, TRANSCODE_INPUT_MINUTES)
        if limit is not None and used >= limit:
            raise _exceeded(TRANSCODE_INPUT_MINUTES, limit, used, 0, now)
    metric, units = units_of(kind, params)
    return Charge(tenant_id, day, metric, units)


def refusal(session: Session, charge: Charge, now: datetime) -> submissions.SubmissionRefused:
    """The error for a charge :func:`apply_charge` refused."""
    limit = _limit(session, charge.tenant_id, charge.metric)
    used = _used(session, charge.tenant_id, charge.day, charge.metric)
    if limit is None:  # the limit was lifted since: say so rather than guess
        return submissions.SubmissionRefused(
            429,
            "quota_exceeded",
            f"The daily quota for {charge.metric} changed while this job was submitted; retry.",
            retry_after=1,
        )
    return _exceeded(charge.metric, limit, used, charge.units, now)


def charge(
    session: Session, tenant_id: uuid.UUID, kind: str, params: dict[str, Any], now: datetime
) -> None:
    """Count the job about to be created against today's usage, in the caller's transaction.

    Raises ``SubmissionRefused(429, "quota_exceeded", ...)`` and changes nothing when
    the job does not fit in what is left of the limit. On PostgreSQL the usage row stays
    locked until the caller commits or rolls back, so concurrent charges queue behind it.
    """
    prepared = prepare_charge(session, tenant_id, kind, params, now)
    if apply_charge(session, prepared) is None:
        raise refusal(session, prepared, now)


def refund(
    session: Session, tenant_id: uuid.UUID, kind: str, params: dict[str, Any], day: date
) -> None:
    """Undo the charge of a job that was never queued (in the caller's transaction)."""
    metric, units = units_of(kind, params)
    session.execute(
        update(TenantUsage)
        .where(
            TenantUsage.tenant_id == tenant_id,
            TenantUsage.day == day,
            TenantUsage.metric == metric,
        )
        .values(used=case((TenantUsage.used > units, TenantUsage.used - units), else_=0))
        .execution_options(synchronize_session=False)
    )


def add_usage(
    session: Session, tenant_id: uuid.UUID, metric: str, amount: int, now: datetime
) -> int:
    """Add ``amount`` to today's usage whatever the limit (it is checked at submission).

    Returns today's usage after the addition.
    """
    check_metric(metric)
    if amount < 0:
        raise ValueError(f"usage only grows; got {amount}")
    used = apply_charge(session, Charge(tenant_id, utc_day(now), metric, amount, enforce=False))
    assert used is not None, "an unconditional upsert always returns the row"
    return used


def set_quota(session: Session, tenant_id: uuid.UUID, metric: str, daily_limit: int | None) -> None:
    """Limit ``metric`` to ``daily_limit`` units per UTC day; None removes the limit."""
    check_metric(metric)
    row = session.get(TenantQuota, (tenant_id, metric))
    if daily_limit is None:
        if row is not None:
            session.delete(row)
        return
    if daily_limit < 0:
        raise ValueError(f"a daily limit cannot be negative; got {daily_limit}")
    if row is None:
        session.add(TenantQuota(tenant_id=tenant_id, metric=metric, daily_limit=daily_limit))
    else:
        row.daily_limit = daily_limit
        row.updated_at = utcnow()


def quotas_of(session: Session, tenant_id: uuid.UUID, now: datetime) -> list[QuotaStatus]:
    """Every metric's limit and the tenant's usage on ``now``'s UTC day."""
    limits: dict[str, int] = {
        metric: limit
        for metric, limit in session.execute(
            select(TenantQuota.metric, TenantQuota.daily_limit).where(
                TenantQuota.tenant_id == tenant_id
            )
        )
    }
    used: dict[str, int] = {
        metric: amount
        for metric, amount in session.execute(
            select(TenantUsage.metric, TenantUsage.used).where(
                TenantUsage.tenant_id == tenant_id, TenantUsage.day == utc_day(now)
            )
        )
    }
    return [QuotaStatus(metric, limits.get(metric), used.get(metric, 0)) for metric in METRICS]


def prune_usage(session: Session, today: date, keep_days: int = USAGE_KEEP_DAYS) -> int:
    """Delete usage older than ``today - keep_days``; returns how many rows went."""
    if keep_days < 0:
        raise ValueError(f"keep_days cannot be negative; got {keep_days}")
    cutoff = today - timedelta(days=keep_days)
    result = session.execute(
        delete(TenantUsage)
        .where(TenantUsage.day < cutoff)
        .execution_options(synchronize_session=False)
    )
    deleted = cast(CursorResult[Any], result).rowcount
    logger.info("pruned %d quota usage rows from before %s", deleted, cutoff.isoformat())
    return deleted


def _limit(session: Session, tenant_id: uuid.UUID, metric: str) -> int | None:
    return session.execute(
        select(TenantQuota.daily_limit).where(
            TenantQuota.tenant_id == tenant_id, TenantQuota.metric == metric
        )
    ).scalar_one_or_none()


def _used(session: Session, tenant_id: uuid.UUID, day: date, metric: str) -> int:
    used = session.execute(
        select(TenantUsage.used).where(
            TenantUsage.tenant_id == tenant_id,
            TenantUsage.day == day,
            TenantUsage.metric == metric,
        )
    ).scalar_one_or_none()
    return used or 0


def apply_charge(session: Session, charge: Charge) -> int | None:
    """Add the charge's units to its usage row if the sum stays within the tenant's limit.

    Returns the usage after the charge, or ``None`` when the limit refused it. One
    statement (built once per database dialect, see :func:`_usage_upsert`)::

        INSERT INTO tenant_usage SELECT ..., units WHERE units <= coalesce(<limit>, units)
        ON CONFLICT DO UPDATE SET used = used + units
            WHERE used + units <= coalesce(<limit>, used + units)

    where ``<limit>`` is a subquery on the tenant's quota (no quota: unlimited). PostgreSQL
    locks the conflicting row and evaluates the condition on its latest committed version,
    so concurrent charges serialise on the row and none overshoots. A charge that does
    not ``enforce`` is added whatever the limit.
    """
    statement = _usage_upsert(session.get_bind().dialect.name, charge.enforce)
    used = (
        session.connection()
        .execute(
            statement,
            {
                "tenant_id": charge.tenant_id,
                "day": charge.day,
                "metric": charge.metric,
                "units": charge.units,
            },
        )
        .scalar_one_or_none()
    )
    return None if used is None else int(used)


@functools.cache
def _usage_upsert(dialect: str, enforce: bool) -> Any:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    tenant_id = bindparam("tenant_id", type_=TenantUsage.tenant_id.type)
    metric = bindparam("metric", type_=TenantUsage.metric.type)
    units = bindparam("units", type_=Integer)
    limit = (
        select(TenantQuota.daily_limit)
        .where(TenantQuota.tenant_id == tenant_id, TenantQuota.metric == metric)
        .scalar_subquery()
    )
    new_row = select(tenant_id, bindparam("day", type_=TenantUsage.day.type), metric, units)
    # (SQLite needs a WHERE before ON CONFLICT even when nothing is checked.)
    new_row = new_row.where(units <= func.coalesce(limit, units) if enforce else true())
    new_used = TenantUsage.used + units
    return (
        insert(TenantUsage)
        .from_select(["tenant_id", "day", "metric", "used"], new_row)
        .on_conflict_do_update(
            index_elements=[TenantUsage.tenant_id, TenantUsage.day, TenantUsage.metric],
            set_={"used": new_used},
            where=new_used <= func.coalesce(limit, new_used) if enforce else None,
        )
        .returning(TenantUsage.used)
    )


def _exceeded(
    metric: str, limit: int, used: int, units: int, now: datetime
) -> submissions.SubmissionRefused:
    reset = next_reset(now)
    resets = f"it resets at {reset.strftime('%Y-%m-%dT%H:%M:%SZ')}"
    usage = f"{used} of {limit} used today, UTC"
    # Waiting cannot help a job larger than a whole day's limit: no Retry-After.
    if limit == 0:
        return submissions.SubmissionRefused(
            429, "quota_exceeded", f"The daily quota for {metric} is 0: this tenant may not use it."
        )
    if units > limit:
        return submissions.SubmissionRefused(
            429,
            "quota_exceeded",
            f"This job needs {units} units of {metric}, more than its daily quota of "
            f"{limit}; split it into smaller jobs ({usage}).",
        )
    if used >= limit:
        message = f"Daily quota for {metric} is spent ({usage}); {resets}."
    else:
        message = (
            f"Daily quota for {metric} has {limit - used} left, too few for this job's "
            f"{units} ({usage}); {resets}."
        )
    retry_after = max(1, math.ceil((reset - now).total_seconds()))
    return submissions.SubmissionRefused(429, "quota_exceeded", message, retry_after=retry_after)
