"""Table definitions (SQLAlchemy Core). Migrations in ``migrations/`` create them."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

metadata = sa.MetaData()

JOB_STATUSES = ("queued", "running", "succeeded", "failed")

jobs = sa.Table(
    "jobs",
    metadata,
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
    sa.Column("batch_id", sa.Text),
    sa.Column("tenant", sa.Text),
    # The task message the job was accepted with: the outbox a relay publishes from.
    sa.Column("message", JSONB),
    # When RabbitMQ confirmed the task message (null: not confirmed yet).
    sa.Column("published_at", sa.DateTime(timezone=True)),
    sa.CheckConstraint(f"status IN {JOB_STATUSES}", name="jobs_status_valid"),
)

model_versions = sa.Table(
    "model_versions",
    metadata,
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

inference_logs = sa.Table(
    "inference_logs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("model_version_id", sa.Integer, sa.ForeignKey("model_versions.id")),
    sa.Column("job_id", sa.Text, sa.ForeignKey("jobs.job_id", ondelete="CASCADE")),
    sa.Column("inference_time_ms", sa.Float),
    sa.Column("cache_hit", sa.Boolean),
    sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
)
