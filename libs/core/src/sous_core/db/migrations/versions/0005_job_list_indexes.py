"""Jobs: indexes for listing a tenant's jobs filtered by state or kind, newest first.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TOP_LEVEL = sa.text("parent_id IS NULL")


def upgrade() -> None:
    for name, column in (
        ("ix_jobs_tenant_state_created", "state"),
        ("ix_jobs_tenant_kind_created", "kind"),
    ):
        op.create_index(
            name,
            "jobs",
            ["tenant_id", column, "created_at", "id"],
            postgresql_where=TOP_LEVEL,
            sqlite_where=TOP_LEVEL,
        )


def downgrade() -> None:
    op.drop_index("ix_jobs_tenant_kind_created", table_name="jobs")
    op.drop_index("ix_jobs_tenant_state_created", table_name="jobs")
