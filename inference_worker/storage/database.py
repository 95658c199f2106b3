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

from inference_worker.storage.schema import jobs, model_versions
from inference_worker.storage.statuses import FINAL_STATUSES
from inference_worker.storage.views import with_json

T = TypeVar("T")
_FINAL = ", ".join(f"'{status}'" for status in FINAL_STATUSES)

# Run at the driver's level (one per submission, where SQLAlchemy's statement compilation cost
# more CPU than the insert): JSON values travel as text and are cast in the statement.
CREATE = (
    "INSERT INTO jobs (job_id, status, created_at, capture_time, frequency_mhz, sample_rate_hz,"
    " n_samples, receivers, iq_sha256, batch_id, tenant, message, published_at)"
    " VALUES (%(job_id)s, 'queued', coalesce(%(created_at)s, now()), %(capture_time)s,"
    " %(frequency_mhz)s, %(sample_rate_hz)s, %(n_samples)s, %(receivers)s::jsonb,"
    " %(iq_sha256)s, %(batch_id)s, %(tenant)s, %(message)s::jsonb,"
    " CASE WHEN %(published)s THEN now() END)"
    " ON CONFLICT (job_id) DO NOTHING"
    # Not the message: the caller has it, and parsing it back costs.
    " RETURNING job_id, status, tenant, iq_sha256, published_at"
)
GET = "SELECT * FROM jobs WHERE job_id = %(job_id)s"
# Statements that change several rows lock them in job id order, so that two of them (a worker's
# batch, a shim's published marks) never wait on each other in a cycle: a deadlock would cost the
# loser a retry after a backoff.
MARK_PUBLISHED = (
    "UPDATE jobs SET published_at = now() WHERE job_id IN (SELECT job_id FROM jobs"
    " WHERE job_id = ANY(%(ids)s) AND published_at IS NULL ORDER BY job_id FOR UPDATE)"
)
# The two statements every job runs, for one job or a batch: one parameter, a JSON array of the
# jobs' values, turned into rows by PostgreSQL (a batch costs one round trip, whatever its size).
_START_COLUMNS = (
    "job_id text, created_at timestamptz, capture_time timestamptz, frequency_mhz float8,"
    " sample_rate_hz float8, n_samples int, receivers jsonb, iq_sha256 text, batch_id text,"
    " tenant text, message jsonb"
)
START_MANY = (
    "INSERT INTO jobs AS j (job_id, status, created_at, started_at, capture_time, frequency_mhz,"
    " sample_rate_hz, n_samples, receivers, iq_sha256, attempts, batch_id, tenant, message,"
    " published_at)"
    " SELECT job_id, 'running', coalesce(created_at, now()), now(), capture_time,"
    " frequency_mhz, sample_rate_hz, n_samples, receivers, iq_sha256, 1, batch_id, tenant,"
    f" message, now() FROM jsonb_to_recordset(%(jobs)s::jsonb) AS r({_START_COLUMNS})"
    " ORDER BY job_id"
    " ON CONFLICT (job_id) DO UPDATE SET status = 'running', started_at = now(),"
    " attempts = j.attempts + 1, published_at = coalesce(j.published_at, now())"
    f" WHERE j.status NOT IN ({_FINAL})"
    " RETURNING job_id, status, created_at, attempts"
)
SUCCEED_MANY = (
    "WITH given AS (SELECT * FROM jsonb_to_recordset(%(results)s::jsonb) AS r(job_id text,"
    " result jsonb, model_version text, model_version_id int, cache_hit bool, timings jsonb,"
    " inference_ms float8)),"
    " locked AS (SELECT job_id FROM jobs WHERE job_id IN (SELECT job_id FROM given)"
    f" AND status NOT IN ({_FINAL}) ORDER BY job_id FOR UPDATE),"
    " done AS (UPDATE jobs SET status = 'succeeded', finished_at = now(), result = g.result,"
    " model_version = g.model_version, cache_hit = g.cache_hit, timings = g.timings,"
    " error = NULL FROM given g WHERE jobs.job_id = g.job_id"
    f" AND jobs.job_id IN (SELECT job_id FROM locked) AND jobs.status NOT IN ({_FINAL})"
    # Not the result, timings or message: the caller has them, and parsing them back costs.
    " RETURNING jobs.job_id, jobs.status, jobs.created_at, jobs.started_at, jobs.finished_at,"
    " jobs.capture_time, jobs.frequency_mhz, jobs.sample_rate_hz, jobs.n_samples,"
    " jobs.receivers, jobs.attempts, jobs.model_version, jobs.cache_hit, jobs.error,"
    " jobs.batch_id, jobs.tenant),"
    " logged AS (INSERT INTO inference_logs (job_id, model_version_id, inference_time_ms,"
    " cache_hit) SELECT d.job_id, g.model_version_id, g.inference_ms, d.cache_hit"
    " FROM done d JOIN given g USING (job_id))"
    " SELECT * FROM done"
)


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

    def _driver_row(self, statement: str, params: dict[str, Any]) -> dict[str, Any] | None:
        """The first row :meth:`_driver_rows` returns, or None."""
        rows = self._driver_rows(statement, params, first_only=True)
        return rows[0] if rows else None

    def _driver_rows(
        self, statement: str, params: dict[str, Any], *, first_only: bool = False
    ) -> list[dict[str, Any]]:
        """The rows of one statement run on a pooled driver connection, with errors as
        SQLAlchemy's. For the statements every job runs (a submission's insert, a poll's read,
        a batch's start and results), where SQLAlchemy's connection and result objects cost
        more CPU than the driver's own work (0.22 against 0.14 ms a submission's insert).

        A pooled connection found dead (the database restarted since it was used) is discarded
        and the statement run on the next, until a live or new one answers: each pooled
        connection may be dead, and every statement here is safe to repeat."""
        dialect = self.engine.dialect
        dbapi_error = dialect.loaded_dbapi.Error
        pool = self.engine.pool
        pooled = pool.size() if isinstance(pool, sa.pool.QueuePool) else 0
        for attempt in range(1, pooled + 2):
            raw = cursor = None
            try:
                raw = self.engine.raw_connection()
                cursor = raw.cursor()
                cursor.execute(statement, params)
                rows = cursor.fetchmany(1) if first_only else cursor.fetchall()
                if not rows:
                    return []
                names = [column[0] for column in cursor.description]
                return [dict(zip(names, row, strict=True)) for row in rows]
            except dbapi_error as exc:
                if raw is None:  # no connection to be had
                    raise sa.exc.DBAPIError.instance(None, None, exc, dbapi_error) from exc
                dead = dialect.is_disconnect(exc, raw.dbapi_connection, cursor)
                if dead:
                    raw.invalidate(exc)
                if dead and attempt <= pooled:
                    continue
                raise sa.exc.DBAPIError.instance(
                    statement, params, exc, dbapi_error, connection_invalidated=dead
                ) from exc
            finally:
                if cursor is not None and not cursor.closed:
                    try:
                        cursor.close()
                    except dbapi_error:
                        pass
                if raw is not None:
                    raw.close()
        raise AssertionError("unreachable")

    def _one(self, statement: sa.Executable) -> RowMapping | None:
        return self._run(lambda connection: connection.execute(statement).mappings().first())

    def ping(self) -> None:
        self._run(lambda connection: connection.execute(sa.text("SELECT 1")))

    def create(self, job: NewJob) -> tuple[Mapping[str, Any], bool]:
        """Insert a queued job; if the id exists already, return that row and ``False``.

        A new row comes back as its id, status, tenant, digest and publication time; an
        existing one whole (its stored message included).
        """
        params = dict(job.__dict__)
        params["receivers"] = orjson.dumps(params["receivers"]).decode()
        params["message"] = None if job.message is None else orjson.dumps(job.message).decode()
        for _ in range(2):  # twice: the existing row may be withdrawn before it is read
            row = self._driver_row(CREATE, params)
            if row is not None:
                return row, True
            existing = self.get(job.job_id)
            if existing is not None:
                return existing, False
        raise RuntimeError(f"job {job.job_id} kept being withdrawn while it was recorded")

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
        producer's message, taken from the queue); ``None`` if the job is already final.

        Returns the job's id, status, creation time and attempts (not the whole row).
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
        rows by job id (a job already final is absent)."""
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
        given = {"results": f"[{encoded}]"}
        return {row["job_id"]: row for row in self._driver_rows(SUCCEED_MANY, given)}

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
