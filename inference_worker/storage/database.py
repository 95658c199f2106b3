"""The job store: job rows in PostgreSQL, the record of truth for every job."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection, Engine, RowMapping

from inference_worker.storage.job_sql import (
    CREATE,
    CREATE_ANSWERED,
    GET,
    MARK_PUBLISHED,
    START_MANY,
    SUCCEED_MANY,
)
from inference_worker.storage.pooled import driver_rows, run
from inference_worker.storage.schema import jobs, model_versions
from inference_worker.storage.statuses import FINAL_STATUSES
from inference_worker.storage.views import with_json

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


class JobStore:
    """Job rows in PostgreSQL. Every state change is a single conditional statement, so a job
    redelivered to several workers still ends with exactly one recorded result; each runs in
    autocommit, one round trip (a single statement is atomic on its own)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _run(self, work: Callable[[Connection], T]) -> T:
        return run(self.engine, work)

    def _driver_row(self, statement: str, params: dict[str, Any]) -> dict[str, Any] | None:
        rows = driver_rows(self.engine, statement, params, first_only=True)
        return rows[0] if rows else None

    def _driver_rows(self, statement: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        return driver_rows(self.engine, statement, params)

    def _one(self, statement: sa.Executable) -> RowMapping | None:
        return self._run(lambda connection: connection.execute(statement).mappings().first())

    def ping(self) -> None:
        self._run(lambda connection: connection.execute(sa.text("SELECT 1")))

    def create(self, job: NewJob) -> tuple[Mapping[str, Any], bool]:
        """Insert a queued job; if the id exists already, return that row and ``False``.

        A new row comes back as its id, status, tenant, digest and publication time; an
        existing one whole (its stored message included).
        """
        return self._insert_unless_exists(CREATE, dict(job.__dict__))

    def create_answered(
        self, job: NewJob, *, result_json: str, model_version: str, timings: dict[str, float]
    ) -> tuple[Mapping[str, Any], bool]:
        """Insert a job already succeeded with a result the cache held (encoded JSON), and its
        log row, in one statement; if the id exists already, return that row and ``False``.

        A new row comes back whole but for its result, timings and message."""
        params = {
            **{k: v for k, v in job.__dict__.items() if k != "published"},
            "result": result_json,
            "model_version": model_version,
            "timings": orjson.dumps(timings).decode(),
        }
        return self._insert_unless_exists(CREATE_ANSWERED, params)

    def _insert_unless_exists(
        self, statement: str, params: dict[str, Any]
    ) -> tuple[Mapping[str, Any], bool]:
        params["receivers"] = orjson.dumps(params["receivers"]).decode()
        message = params["message"]
        params["message"] = None if message is None else orjson.dumps(message).decode()
        for _ in range(2):  # twice: the existing row may be withdrawn before it is read
            row = self._driver_row(statement, params)
            if row is not None:
                return row, True
            existing = self.get(params["job_id"])
            if existing is not None:
                return existing, False
        raise RuntimeError(f"job {params['job_id']} kept being withdrawn while it was recorded")

    def mark_published(self, *job_ids: str) -> None:
        """Record that RabbitMQ confirmed these jobs' task messages (their outbox entries are
        done)."""
        ids = {"ids": list(job_ids)}
        self._run(lambda connection: connection.exec_driver_sql(MARK_PUBLISHED, ids))

    def delete_queued(self, job_id: str) -> None:
        """Withdraw a job that could not be enqueued (the client was told to retry)."""
        statement = sa.delete(jobs).where(jobs.c.job_id == job_id, jobs.c.status == "queued")
        self._run(lambda connection: connection.execute(statement))

    def get(self, job_id: str) -> dict[str, Any] | None:
        return self._driver_row(GET, {"job_id": job_id})

    def batch(self, batch_id: str) -> list[RowMapping]:
        """The jobs of a batch, in submission order."""
        statement = sa.select(jobs).where(jobs.c.batch_id == batch_id).order_by(jobs.c.created_at)
        return self._run(lambda connection: list(connection.execute(statement).mappings()))

    def start(self, job: NewJob) -> dict[str, Any] | None:
        """Mark a job running and count the attempt, writing its row first if it has none (a
        producer's message, taken from the queue); ``None`` if the job is already final or of
        another capture (its row is then left as it is).

        Returns the job's id, status, creation and start times and attempts (not the whole row).
        """
        return self.start_many([job]).get(job.job_id)

    def succeed(
        self,
        job_id: str,
        *,
        result: dict[str, Any],
        model_version: str,
        model_version_id: int | None,
        cache_hit: bool,
        timings: dict[str, float],
    ) -> dict[str, Any] | None:
        """Record the result unless the job is already final; returns the final row if recorded.

        One statement: the job's UPDATE and its ``inference_logs`` row commit together.
        """
        recorded = self.succeed_many(
            [
                {
                    "job_id": job_id,
                    "result_json": orjson.dumps(result).decode(),
                    "model_version": model_version,
                    "model_version_id": model_version_id,
                    "cache_hit": cache_hit,
                    "timings": timings,
                }
            ]
        ).get(job_id)
        return None if recorded is None else {**recorded, "result": result, "timings": timings}

    def start_many(self, new_jobs: list[NewJob]) -> dict[str, dict[str, Any]]:
        """:meth:`start` for several jobs (distinct ids) in one statement; returns the started
        rows by job id (a job already final, or of another capture, is absent)."""
        if not new_jobs:
            return {}
        rows = []
        for job in new_jobs:
            row = {**job.__dict__}
            row.pop("published")
            for name in ("capture_time", "created_at"):
                row[name] = None if row[name] is None else row[name].isoformat()
            rows.append(row)
        started = self._driver_rows(START_MANY, {"jobs": orjson.dumps(rows).decode()})
        return {row["job_id"]: row for row in started}

    def succeed_many(self, results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """:meth:`succeed` for several jobs in one statement. Each entry holds the keyword
        arguments of :meth:`succeed` and ``job_id``, with the result as encoded JSON
        (``result_json``); returns the final rows of the jobs whose result was recorded, by job
        id, without their result (the caller has it). The jobs' updates and log rows commit
        together."""
        if not results:
            return {}
        rows = self._driver_rows(SUCCEED_MANY, succeed_parameters(results))
        return {row["job_id"]: row for row in rows}

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


def succeed_parameters(results: list[dict[str, Any]]) -> dict[str, str]:
    """The parameter of the results statement (``SUCCEED_MANY``): one JSON array of the jobs'
    values, each result spliced in as the JSON it was encoded to."""
    encoded = ", ".join(
        with_json(
            {
                **{k: v for k, v in r.items() if k != "result_json"},
                "inference_ms": r["timings"].get("inference_ms"),
            },
            "result",
            r["result_json"],
        )
        for r in results
    )
    return {"results": f"[{encoded}]"}
