"""Tables: tenants, keys, quotas and usage; jobs and webhook deliveries; schedules."""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from sous_core.states import JobState


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite hands back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given; use datetime.now(UTC)")
        if value is not None and dialect.name == "sqlite":
            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


JSONDocument = JSON().with_variant(JSONB(), "postgresql")


def new_webhook_secret() -> str:
    return "whsec_" + secrets.token_hex(24)


class Base(DeclarativeBase):
    pass


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: Key of the HMAC that signs this tenant's webhooks (``sous tenants webhook-secret``).
    webhook_secret: Mapped[str] = mapped_column(String(64), default=new_webhook_secret)

    keys: Mapped[list[ApiKey]] = relationship(back_populates="tenant")


class ApiKey(Base):
    """An API key; only its SHA-256 is stored, the key itself is shown once at creation."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    #: Public, non-secret part of the key, used to find the row (``sous_<prefix>_<secret>``).
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    secret_sha256: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    tenant: Mapped[Tenant] = relationship(back_populates="keys")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint("progress >= 0 AND progress <= 100", name="progress_range"),
        CheckConstraint(
            "state IN (" + ", ".join(f"'{state.value}'" for state in JobState) + ")",
            name="state_known",
        ),
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
        Index("ix_jobs_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_jobs_state_updated", "state", "updated_at"),
        Index("ix_jobs_parent_index", "parent_id", "batch_index"),
        # GET /v1/jobs filtered by state or kind, newest first: without these, a rare
        # value means walking a tenant's whole history (bench/scale.py).
        Index(
            "ix_jobs_tenant_state_created",
            "tenant_id",
            "state",
            "created_at",
            "id",
            postgresql_where=text("parent_id IS NULL"),
            sqlite_where=text("parent_id IS NULL"),
        ),
        Index(
            "ix_jobs_tenant_kind_created",
            "tenant_id",
            "kind",
            "created_at",
            "id",
            postgresql_where=text("parent_id IS NULL"),
            sqlite_where=text("parent_id IS NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    state: Mapped[str] = mapped_column(String(16), default=JobState.PENDING.value)
    progress: Mapped[int] = mapped_column(Integer, default=0)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: Times a worker started the job (redeliveries and retries included).
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: A cancel asked for while the job ran; the worker stops at its next check.
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    #: SHA-256 of the submitted request, to tell a replay from a reused key.
    request_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: The batch a child job belongs to, and its place in the batch's list.
    parent_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), nullable=True
    )
    batch_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: A batch's number of children (set when it fans out) and how many have finished.
    children_total: Mapped[int | None] = mapped_column(Integer, nullable=True)
    children_finished: Mapped[int] = mapped_column(Integer, default=0)
    #: Where to POST the job once it finishes (a webhook), if the client asked.
    callback_url: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    #: The schedule that created this job, if a schedule did.
    schedule_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("schedules.id", ondelete="SET NULL"), nullable=True
    )
    #: Last sign of life from the worker running the job (the stuck-job reaper reads it).
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: When the running job expects to finish, as its worker last estimated.
    eta_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: Times the reaper re-queued this job after its worker went silent.
    reaped: Mapped[int] = mapped_column(SmallInteger, default=0)

    @property
    def job_state(self) -> JobState:
        return JobState(self.state)


class WebhookState:
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class WebhookDelivery(Base):
    """The POST of a finished job to its ``callback_url``: an outbox row, then its record.

    Written in the same transaction that finishes the job, so no finished job misses
    its webhook; fast workers claim due rows, POST, and record the outcome here.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint("state IN ('pending', 'delivered', 'failed')", name="webhook_state_known"),
        Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), unique=True
    )
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2048))
    state: Mapped[str] = mapped_column(String(16), default=WebhookState.PENDING)
    attempts: Mapped[int] = mapped_column(SmallInteger, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: A worker holds the row until then while it POSTs; after that, another may retry.
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class TenantQuota(Base):
    """A tenant's daily limit on one metric (``jobs:<kind>`` or ``transcode_input_minutes``).

    No row means no limit.
    """

    __tablename__ = "tenant_quotas"

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    metric: Mapped[str] = mapped_column(String(64), primary_key=True)
    daily_limit: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class TenantUsage(Base):
    """How much of a metric a tenant used on one (UTC) day; a new day starts at zero."""

    __tablename__ = "tenant_usage"

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    metric: Mapped[str] = mapped_column(String(64), primary_key=True)
    used: Mapped[int] = mapped_column(BigInteger, default=0)


class Schedule(Base):
    """A tenant's recurring job: a cron expression in a time zone, and the job to submit."""

    __tablename__ = "schedules"
    __table_args__ = (
        CheckConstraint("missed_policy IN ('skip', 'catch_up')", name="missed_policy_known"),
        Index("ix_schedules_due", "enabled", "next_fire_at"),
        Index("ix_schedules_tenant_created", "tenant_id", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100), default="")
    cron: Mapped[str] = mapped_column(String(120))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    #: ``{"kind": ..., <that kind's submission body>}``.
    job: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    #: Ticks missed while no scheduler ran: ``skip`` them, or ``catch_up`` with one run.
    missed_policy: Mapped[str] = mapped_column(String(16), default="skip")
    #: The next tick to fire (UTC); null while disabled.
    next_fire_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_fired_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ScheduleRun(Base):
    """One tick of a schedule; the unique (schedule, tick) makes each tick fire once."""

    __tablename__ = "schedule_runs"
    __table_args__ = (
        UniqueConstraint("schedule_id", "tick", name="uq_schedule_runs_schedule_tick"),
        Index("ix_schedule_runs_schedule_tick", "schedule_id", "tick"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    schedule_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("schedules.id", ondelete="CASCADE"))
    tick: Mapped[datetime] = mapped_column(UTCDateTime)
    job_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True
    )
    #: ``submitted``, or ``rejected`` (quota spent, invalid job) with ``error``.
    outcome: Mapped[str] = mapped_column(String(16), default="submitted")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class MaintenanceTick(Base):
    """A platform maintenance task's tick, claimed once however many schedulers run."""

    __tablename__ = "maintenance_ticks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    tick: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    claimed_by: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
