"""jobs.message and jobs.published_at: the job row is the outbox of its task message

A submission records its task message with the row and marks the row published once RabbitMQ
confirmed the message; a worker publishes what stayed unconfirmed. Indexes for that relay, for
the stuck-job report and for retention.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("message", JSONB))
    op.add_column("jobs", sa.Column("published_at", sa.DateTime(timezone=True)))
    # Rows of earlier releases: their messages were published or are lost; nothing to relay.
    op.execute("UPDATE jobs SET published_at = created_at")
    op.create_index(
        "jobs_unpublished",
        "jobs",
        ["created_at"],
        postgresql_where=sa.text("published_at IS NULL AND status = 'queued'"),
    )
    op.create_index(
        "jobs_not_final",
        "jobs",
        ["created_at"],
        postgresql_where=sa.text("status IN ('queued', 'running')"),
    )
    op.create_index("jobs_finished_at", "jobs", ["finished_at"])


def downgrade() -> None:
    op.drop_index("jobs_finished_at", "jobs")
    op.drop_index("jobs_not_final", "jobs")
    op.drop_index("jobs_unpublished", "jobs")
    op.drop_column("jobs", "published_at")
    op.drop_column("jobs", "message")
