"""The job store: job rows in PostgreSQL, the record of truth for every job."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection, Engine, RowMapping

from inference_worker.storage.schema import inference_logs, jobs, model_versions
from inference_worker.storage.statuses import FINAL_STATUSES

T = TypeVar("T")


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


def _row_values(job: NewJob) -> dict[str, Any]:
    """The columns of a new job's row (``published`` becomes ``published_at``)."""
    values = {k: v for k, v in job.__dict__.items() if not (k == "created_at" and v is None)}
    values["published_at"] = sa.func.now() if values.pop("published") else None
    return values


class JobStore:
    """Job rows in PostgreSQL. Every state change is a single conditional statement, so a job
    redelivered to several workers still ends with exactly one recorded result; each runs in
    autocommit, one round trip (a single statement is atomic on its own)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _run(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` on a pooled connection, and once more on a fresh one if the pooled one
        turned out dead (the database restarted since it was used): every statement here is
        safe to repeat, and no ping is paid on each checkout."""
        try:
            with self.engine.connect() as connection:
                return work(connection)
        except sa.exc.DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
        with self.engine.connect() as connection:
            return work(connection)

    def _one(self, statement: sa.Executable) -> RowMapping | None:
        return self._run(lambda connection: connection.execute(statement).mappings().first())

    def ping(self) -> None:
        self._run(lambda connection: connection.execute(sa.text("SELECT 1")))

    def create(self, job: NewJob) -> tuple[RowMapping, bool]:
        """Insert a queued job; if the id exists already, return that row and ``False``."""
        statement = (
            pg_insert(jobs)
            .values(status="queued", **_row_values(job))
            .on_conflict_do_nothing(index_elements=["job_id"])
            .returning(*jobs.c)
        )

        def insert(connection: Connection) -> tuple[RowMapping, bool]:
            row = connection.execute(statement).mappings().first()
            if row is not None:
                return row, True
            existing = connection.execute(sa.select(jobs).where(jobs.c.job_id == job.job_id))
            return existing.mappings().one(), False

        return self._run(insert)

    def mark_published(self, *job_ids: str) -> None:
        """Record that RabbitMQ confirmed these jobs' task messages (their outbox entries are
        done)."""
        statement = (
            sa.update(jobs)
            .where(jobs.c.job_id.in_(job_ids), jobs.c.published_at.is_(None))
            .values(published_at=sa.func.now())
        )
        self._run(lambda connection: connection.execute(statement))

    def delete_queued(self, job_id: str) -> None:
        """Withdraw a job that could not be enqueued (the client was told to retry)."""
        statement = sa.delete(jobs).where(jobs.c.job_id == job_id, jobs.c.status == "queued")
        self._run(lambda connection: connection.execute(statement))

    def get(self, job_id: str) -> RowMapping | None:
        return self._one(sa.select(jobs).where(jobs.c.job_id == job_id))

    def batch(self, batch_id: str) -> list[RowMapping]:
        """The jobs of a batch, in submission order."""
        statement = sa.select(jobs).where(jobs.c.batch_id == batch_id).order_by(jobs.c.created_at)
        return self._run(lambda connection: list(connection.execute(statement).mappings()))

    def start(self, job: NewJob) -> RowMapping | None:
        """Mark a job running and count the attempt, writing its row first if it has none (a
        producer's message, taken from the queue); ``None`` if the job is already final.

        Returns the job's id, status, creation time and attempts (not the whole row).
        """
        now = sa.func.now()
        statement = (
            pg_insert(jobs)
            .values(status="running", started_at=now, attempts=1, **_row_values(job))
            .on_conflict_do_update(
                index_elements=["job_id"],
                set_={
                    "status": "running",
                    "started_at": now,
                    "attempts": jobs.c.attempts + 1,
                    # taken from the queue, so its message was published whatever the row says
                    "published_at": sa.func.coalesce(jobs.c.published_at, now),
                },
                where=jobs.c.status.not_in(FINAL_STATUSES),
            )
            .returning(jobs.c.job_id, jobs.c.status, jobs.c.created_at, jobs.c.attempts)
        )
        return self._one(statement)

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
        """Record the result unless the job is already final; returns the final row if recorded.

        One statement: the job's UPDATE and its ``inference_logs`` row commit together.
        """
        done = (
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
            .cte("done")
        )
        logged = (
            sa.insert(inference_logs)
            .from_select(
                ["job_id", "model_version_id", "inference_time_ms", "cache_hit"],
                sa.select(
                    done.c.job_id,
                    sa.literal(model_version_id, sa.Integer),
                    sa.literal(timings.get("inference_ms"), sa.Float),
                    sa.literal(cache_hit, sa.Boolean),
                ),
            )
            .cte("logged")
        )
        return self._one(sa.select(done).add_cte(logged))

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
        return self._one(statement)

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
        return self._one(statement)

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
