"""PostgreSQL access: engine, migrations and the job store (the record of truth for every job)."""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Engine, RowMapping

from inference_worker.settings import Settings
from inference_worker.storage.schema import inference_logs, jobs, model_versions
from inference_worker.storage.statuses import FINAL_STATUSES

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def create_engine(
    database_url: str,
    schema: str,
    *,
    pool_size: int = 5,
    role: str = "heimdall",
    statement_timeout_s: float = 15.0,
) -> Engine:
    """An engine whose connections use ``schema`` (tests use a schema of their own).

    Connections name their process (``application_name``: role and pid), so an operator sees in
    ``pg_stat_activity`` which worker or shim process holds which connection. No statement runs
    longer than ``statement_timeout_s``: a hung database turns into an error that is retried.
    """
    timeout_ms = statement_timeout_s * 1e3
    return sa.create_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=5,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={
            "options": f"-csearch_path={schema} -cstatement_timeout={round(timeout_ms)}",
            "connect_timeout": 3,
            "application_name": f"{role} pid {os.getpid()}",
        },
    )


def engine_for(settings: Settings, *, role: str = "heimdall", pool_size: int = 5) -> Engine:
    """The engine of the settings' database and schema, with their statement timeout."""
    return create_engine(
        settings.database_url,
        settings.database_schema,
        pool_size=pool_size,
        role=role,
        statement_timeout_s=settings.database_statement_timeout_s,
    )


def migrate(engine: Engine, schema: str) -> None:
    """Create the schema if needed and bring it to the newest revision.

    Safe to call from many processes at once: a PostgreSQL advisory lock serializes them.
    """
    lock_id = zlib.crc32(f"heimdall-migrate:{schema}".encode())
    with engine.connect() as connection:
        connection.execute(sa.text("SELECT pg_advisory_lock(:id)"), {"id": lock_id})
        try:
            connection.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            connection.commit()
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS_DIR))
            config.attributes["connection"] = connection
            config.attributes["schema"] = schema
            command.upgrade(config, "head")
            connection.commit()
        finally:
            connection.execute(sa.text("SELECT pg_advisory_unlock(:id)"), {"id": lock_id})
            connection.commit()


@dataclass(frozen=True)
class NewJob:
    job_id: str
    capture_time: datetime
    frequency_mhz: float
    sample_rate_hz: float
    n_samples: int
    receivers: list[str]
    iq_sha256: str
    created_at: datetime | None = None
    """Defaults to the time of the insert."""
    batch_id: str | None = None
    tenant: str | None = None
    message: dict[str, Any] | None = None
    """The task message, kept with the row (the outbox) until RabbitMQ confirms it."""
    published: bool = True
    """False while the task message is not confirmed published (the shim's submissions)."""


class JobStore:
    """Job rows in PostgreSQL. Every state change is a single conditional UPDATE, so a job
    redelivered to several workers still ends with exactly one recorded result."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))

    def create(self, job: NewJob) -> tuple[RowMapping, bool]:
        """Insert a queued job; if the id exists already, return that row and ``False``."""
        values = {k: v for k, v in job.__dict__.items() if not (k == "created_at" and v is None)}
        published = values.pop("published")
        statement = (
            pg_insert(jobs)
            .values(status="queued", published_at=sa.func.now() if published else None, **values)
            .on_conflict_do_nothing(index_elements=["job_id"])
            .returning(*jobs.c)
        )
        with self.engine.begin() as connection:
            row = connection.execute(statement).mappings().first()
            if row is not None:
                return row, True
            existing = (
                connection.execute(sa.select(jobs).where(jobs.c.job_id == job.job_id))
                .mappings()
                .one()
            )
            return existing, False

    def mark_published(self, job_id: str) -> None:
        """Record that RabbitMQ confirmed the job's task message (the outbox entry is done)."""
        with self.engine.begin() as connection:
            connection.execute(
                sa.update(jobs)
                .where(jobs.c.job_id == job_id, jobs.c.published_at.is_(None))
                .values(published_at=sa.func.now())
            )

    def delete_queued(self, job_id: str) -> None:
        """Withdraw a job that could not be enqueued (the client was told to retry)."""
        with self.engine.begin() as connection:
            connection.execute(
                sa.delete(jobs).where(jobs.c.job_id == job_id, jobs.c.status == "queued")
            )

    def get(self, job_id: str) -> RowMapping | None:
        with self.engine.connect() as connection:
            return (
                connection.execute(sa.select(jobs).where(jobs.c.job_id == job_id))
                .mappings()
                .first()
            )

    def batch(self, batch_id: str) -> list[RowMapping]:
        """The jobs of a batch, in submission order."""
        with self.engine.connect() as connection:
            return list(
                connection.execute(
                    sa.select(jobs).where(jobs.c.batch_id == batch_id).order_by(jobs.c.created_at)
                ).mappings()
            )

    def start(self, job_id: str) -> RowMapping | None:
        """Mark a job running and count the attempt; ``None`` if it is unknown or already final."""
        statement = (
            sa.update(jobs)
            .where(jobs.c.job_id == job_id, jobs.c.status.not_in(FINAL_STATUSES))
            .values(status="running", started_at=sa.func.now(), attempts=jobs.c.attempts + 1)
            .returning(*jobs.c)
        )
        with self.engine.begin() as connection:
            return connection.execute(statement).mappings().first()

    def succeed(
        self,
        job_id: str,
        *,
        result: dict[str, Any],
        model_version: str,
        model_version_id: int | None,
        cache_hit: bool,
        timings: dict[str, float],
    ) -> RowMapping | None:
        """Record the result unless the job is already final; returns the final row if recorded."""
        statement = (
            sa.update(jobs)
            .where(jobs.c.job_id == job_id, jobs.c.status.not_in(FINAL_STATUSES))
            .values(
                status="succeeded",
                finished_at=sa.func.now(),
                result=result,
                model_version=model_version,
                cache_hit=cache_hit,
                timings=timings,
                error=None,
            )
            .returning(*jobs.c)
        )
        with self.engine.begin() as connection:
            row = connection.execute(statement).mappings().first()
            if row is not None:
                connection.execute(
                    sa.insert(inference_logs).values(
                        job_id=job_id,
                        model_version_id=model_version_id,
                        inference_time_ms=timings.get("inference_ms"),
                        cache_hit=cache_hit,
                    )
                )
            return row

    def record_rejected(self, job_id: str, error: str) -> RowMapping | None:
        """Record a job whose message was unusable, so its producer can read why.

        The capture fields are unknown (the message did not carry them in a usable form), so
        they are left empty; an existing, unfinished job is failed with the reason instead.
        """
        placeholders = {
            "capture_time": sa.func.now(),
            "frequency_mhz": 0.0,
            "sample_rate_hz": 0.0,
            "n_samples": 0,
            "receivers": [],
            "iq_sha256": "",
        }
        statement = (
            pg_insert(jobs)
            .values(
                job_id=job_id,
                status="failed",
                finished_at=sa.func.now(),
                error=error,
                **placeholders,
            )
            .on_conflict_do_update(
                index_elements=["job_id"],
                set_={"status": "failed", "finished_at": sa.func.now(), "error": error},
                where=jobs.c.status.not_in(FINAL_STATUSES),
            )
            .returning(*jobs.c)
        )
        with self.engine.begin() as connection:
            return connection.execute(statement).mappings().first()

    def fail(
        self, job_id: str, error: str, *, model_version: str | None = None
    ) -> RowMapping | None:
        """Mark a job failed with its reason unless it is already final."""
        statement = (
            sa.update(jobs)
            .where(jobs.c.job_id == job_id, jobs.c.status.not_in(FINAL_STATUSES))
            .values(
                status="failed", finished_at=sa.func.now(), error=error, model_version=model_version
            )
            .returning(*jobs.c)
        )
        with self.engine.begin() as connection:
            return connection.execute(statement).mappings().first()

    def register_model(
        self, *, name: str, version: str, onnx_path: str, sha256: str, metrics: dict[str, Any]
    ) -> int:
        """Upsert the ``model_versions`` row of a loaded model, mark it active, return its id."""
        statement = (
            pg_insert(model_versions)
            .values(
                name=name,
                version=version,
                onnx_path=onnx_path,
                sha256=sha256,
                metrics=metrics,
                is_active=True,
            )
            .on_conflict_do_update(
                constraint="model_versions_name_version",
                set_={
                    "onnx_path": onnx_path,
                    "sha256": sha256,
                    "metrics": metrics,
                    "is_active": True,
                },
            )
            .returning(model_versions.c.id)
        )
        with self.engine.begin() as connection:
            return int(connection.execute(statement).scalar_one())

    def sync_registry(self, name: str, versions: list[dict[str, Any]]) -> None:
        """Mirror the registry into ``model_versions``: a row per model version, active when an
        alias names it (``versions``: model_version, sha256, source, run_id, aliases)."""
        with self.engine.begin() as connection:
            for v in versions:
                values = {
                    "onnx_path": v["source"],
                    "mlflow_run_id": v.get("run_id"),
                    "sha256": v["sha256"],
                    "is_active": bool(v["aliases"]),
                }
                connection.execute(
                    pg_insert(model_versions)
                    .values(name=name, version=v["model_version"], **values)
                    .on_conflict_do_update(constraint="model_versions_name_version", set_=values)
                )
