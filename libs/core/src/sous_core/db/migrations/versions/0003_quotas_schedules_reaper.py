"""Quotas and usage, user schedules and their runs, maintenance ticks, job heartbeats.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)
JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _tenant_fk() -> sa.Column:
    return sa.Column(
        "tenant_id",
        sa.Uuid(),
        sa.ForeignKey("tenants.id", ondelete="CASCADE"),
        primary_key=True,
    )


def upgrade() -> None:
    op.create_table(
        "tenant_quotas",
        _tenant_fk(),
        sa.Column("metric", sa.String(length=64), primary_key=True),
        sa.Column("daily_limit", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
    )
    op.create_table(
        "tenant_usage",
        _tenant_fk(),
        sa.Column("day", sa.Date(), primary_key=True),
        sa.Column("metric", sa.String(length=64), primary_key=True),
        sa.Column("used", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "schedules",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column(
            "tenant_id",
            sa.Uuid(),
            sa.ForeignKey("tenants.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("cron", sa.String(length=120), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("job", JSON_DOCUMENT, nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("missed_policy", sa.String(length=16), nullable=False),
        sa.Column("next_fire_at", TIMESTAMP, nullable=True),
        sa.Column("last_fired_at", TIMESTAMP, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint("missed_policy IN ('skip', 'catch_up')", name="missed_policy_known"),
    )
    op.create_index("ix_schedules_due", "schedules", ["enabled", "next_fire_at"])
    op.create_index("ix_schedules_tenant_created", "schedules", ["tenant_id", "created_at", "id"])
    op.create_table(
        "schedule_runs",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column(
            "schedule_id",
            sa.Uuid(),
            sa.ForeignKey("schedules.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("tick", TIMESTAMP, nullable=False),
        sa.Column(
            "job_id", sa.Uuid(), sa.ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True
        ),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.UniqueConstraint("schedule_id", "tick", name="uq_schedule_runs_schedule_tick"),
    )
    op.create_index("ix_schedule_runs_schedule_tick", "schedule_runs", ["schedule_id", "tick"])
    op.create_table(
        "maintenance_ticks",
        sa.Column("name", sa.String(length=64), primary_key=True),
        sa.Column("tick", TIMESTAMP, primary_key=True),
        sa.Column("claimed_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
    )
    with op.batch_alter_table("jobs") as table:
        table.add_column(sa.Column("schedule_id", sa.Uuid(), nullable=True))
        table.add_column(sa.Column("heartbeat_at", TIMESTAMP, nullable=True))
        table.add_column(sa.Column("reaped", sa.SmallInteger(), nullable=False, server_default="0"))
        table.create_foreign_key(
            "fk_jobs_schedule_id_schedules",
            "schedules",
            ["schedule_id"],
            ["id"],
            ondelete="SET NULL",
        )
    with op.batch_alter_table("jobs") as table:
        table.alter_column("reaped", existing_type=sa.SmallInteger(), server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("jobs") as table:
        table.drop_constraint("fk_jobs_schedule_id_schedules", type_="foreignkey")
        table.drop_column("reaped")
        table.drop_column("heartbeat_at")
        table.drop_column("schedule_id")
    op.drop_table("maintenance_ticks")
    op.drop_table("schedule_runs")
    op.drop_table("schedules")
    op.drop_table("tenant_usage")
    op.drop_table("tenant_quotas")
