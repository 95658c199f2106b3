"""jobs, model_versions and inference_logs

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("job_id", sa.Text, primary_key=True),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("capture_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("frequency_mhz", sa.Float, nullable=False),
        sa.Column("sample_rate_hz", sa.Float, nullable=False),
        sa.Column("n_samples", sa.Integer, nullable=False),
        sa.Column("receivers", JSONB, nullable=False),
        sa.Column("iq_sha256", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("model_version", sa.Text),
        sa.Column("cache_hit", sa.Boolean),
        sa.Column("result", JSONB),
        sa.Column("error", sa.Text),
        sa.Column("timings", JSONB),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed')", name="jobs_status_valid"
        ),
    )
    op.create_index("jobs_status_created", "jobs", ["status", "created_at"])
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("version", sa.String(50), nullable=False),
        sa.Column("onnx_path", sa.String(512)),
        sa.Column("mlflow_run_id", sa.String(255)),
        sa.Column("accuracy_at_30m", sa.Float),
        sa.Column("calibration_error", sa.Float),
        sa.Column("sha256", sa.String(64)),
        sa.Column("metrics", JSONB),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("is_active", sa.Boolean, server_default=sa.false()),
        sa.UniqueConstraint("name", "version", name="model_versions_name_version"),
    )
    op.create_table(
        "inference_logs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("model_version_id", sa.Integer, sa.ForeignKey("model_versions.id")),
        sa.Column("job_id", sa.Text, sa.ForeignKey("jobs.job_id", ondelete="CASCADE")),
        sa.Column("inference_time_ms", sa.Float),
        sa.Column("cache_hit", sa.Boolean),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    )
    op.create_index("inference_logs_job", "inference_logs", ["job_id"])


def downgrade() -> None:
    op.drop_table("inference_logs")
    op.drop_table("model_versions")
    op.drop_index("jobs_status_created", table_name="jobs")
    op.drop_table("jobs")
