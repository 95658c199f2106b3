"""jobs.tenant: the tenant of the API key that submitted the job (null: none)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("tenant", sa.Text))


def downgrade() -> None:
    op.drop_column("jobs", "tenant")
