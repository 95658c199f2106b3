"""jobs.batch_id: captures submitted together can be polled together

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("batch_id", sa.Text))
    op.create_index(
        "jobs_batch", "jobs", ["batch_id"], postgresql_where=sa.text("batch_id IS NOT NULL")
    )


def downgrade() -> None:
    op.drop_index("jobs_batch", table_name="jobs")
    op.drop_column("jobs", "batch_id")
