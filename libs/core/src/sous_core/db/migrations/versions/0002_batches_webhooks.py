"""Batches (parent/child jobs), webhooks (callback URL, tenant secret, delivery outbox).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("tenants") as table:
        table.add_column(sa.Column("webhook_secret", sa.String(length=64), nullable=True))
    tenants = sa.table("tenants", sa.column("id", sa.Uuid()), sa.column("webhook_secret"))
    connection = op.get_bind()
    for (tenant_id,) in connection.execute(sa.select(tenants.c.id)).all():
        connection.execute(
            tenants.update()
            .where(tenants.c.id == tenant_id)
            .values(webhook_secret="whsec_" + secrets.token_hex(24))
        )
    with op.batch_alter_table("tenants") as table:
        table.alter_column("webhook_secret", existing_type=sa.String(length=64), nullable=False)

    with op.batch_alter_table("jobs") as table:
        table.add_column(sa.Column("parent_id", sa.Uuid(), nullable=True))
        table.add_column(sa.Column("batch_index", sa.Integer(), nullable=True))
        table.add_column(sa.Column("children_total", sa.Integer(), nullable=True))
        table.add_column(
            sa.Column("children_finished", sa.Integer(), nullable=False, server_default="0")
        )
        table.add_column(sa.Column("callback_url", sa.String(length=2048), nullable=True))
        table.create_foreign_key(
            "fk_jobs_parent_id_jobs", "jobs", ["parent_id"], ["id"], ondelete="CASCADE"
        )
    with op.batch_alter_table("jobs") as table:
        table.alter_column("children_finished", existing_type=sa.Integer(), server_default=None)
    op.create_index("ix_jobs_parent_index", "jobs", ["parent_id", "batch_index"])

    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column(
            "job_id",
            sa.Uuid(),
            sa.ForeignKey("jobs.id", ondelete="CASCADE"),
            nullable=False,
            unique=True,
        ),
        sa.Column(
            "tenant_id",
            sa.Uuid(),
            sa.ForeignKey("tenants.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.SmallInteger(), nullable=False),
        sa.Column("next_attempt_at", TIMESTAMP, nullable=False),
        sa.Column("locked_until", TIMESTAMP, nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.CheckConstraint(
            "state IN ('pending', 'delivered', 'failed')", name="webhook_state_known"
        ),
    )
    op.create_index("ix_webhook_deliveries_due", "webhook_deliveries", ["state", "next_attempt_at"])


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
    op.drop_index("ix_jobs_parent_index", table_name="jobs")
    with op.batch_alter_table("jobs") as table:
        table.drop_constraint("fk_jobs_parent_id_jobs", type_="foreignkey")
        table.drop_column("callback_url")
        table.drop_column("children_finished")
        table.drop_column("children_total")
        table.drop_column("batch_index")
        table.drop_column("parent_id")
    with op.batch_alter_table("tenants") as table:
        table.drop_column("webhook_secret")
