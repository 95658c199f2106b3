"""The job store keeps answering when PostgreSQL dropped its pooled connections, and says a
database it cannot reach is unavailable (an error the shim answers with 503)."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from inference_worker.storage.database import JobStore, NewJob, succeed_parameters
from inference_worker.storage.engine import create_engine
from inference_worker.storage.errors import TRANSIENT_ERRORS
from inference_worker.storage.job_sql import SUCCEED_MANY
from inference_worker.storage.pooled import prepared_form
from tests.integration.helpers import job_row, migrated_schema

ROLE = f"store-test-{uuid.uuid4().hex[:8]}"


def queued_job(**changes: object) -> NewJob:
    fields: dict[str, object] = {
        "job_id": str(uuid.uuid4()),
        "capture_time": datetime.now(UTC),
        "frequency_mhz": 145.5,
        "sample_rate_hz": 12_000.0,
        "n_samples": 12_000,
        "receivers": ["a", "b", "c"],
        "iq_sha256": "0" * 64,
        "message": {"job_id": "kept with the row"},
        "published": False,
    }
    return NewJob(**{**fields, **changes})  # type: ignore[arg-type]


@pytest.fixture
def own_engine(settings, engine):
    """An engine of three pooled connections, named so that only they are dropped."""
    own = create_engine(settings.database_url, settings.database_schema, pool_size=3, role=ROLE)
    yield own
    own.dispose()


def fill_pool(engine: sa.Engine) -> None:
    held = [engine.raw_connection() for _ in range(3)]
    for connection in held:
        connection.close()


def drop_connections(engine: sa.Engine, role: str) -> int:
    with engine.connect() as connection:
        return len(
            connection.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name LIKE :name"
                ),
                {"name": f"{role} pid %"},
            ).all()
        )


def test_a_job_is_recorded_and_read_after_the_database_dropped_every_pooled_connection(
    own_engine, engine
):
    store = JobStore(own_engine)
    fill_pool(own_engine)
    assert drop_connections(engine, ROLE) == 3

    job = queued_job()
    row, created = store.create(job)
    assert created and row["status"] == "queued" and row["published_at"] is None

    assert drop_connections(engine, ROLE) >= 1
    read = store.get(job.job_id)
    assert read is not None and read["message"] == {"job_id": "kept with the row"}


def test_the_same_job_id_again_returns_the_existing_row_with_its_message(own_engine):
    store = JobStore(own_engine)
    job = queued_job()
    store.create(job)
    row, created = store.create(queued_job(job_id=job.job_id, iq_sha256="1" * 64))
    assert not created
    assert row["iq_sha256"] == "0" * 64 and row["message"] == {"job_id": "kept with the row"}


def finished_result(job_id: str) -> dict[str, object]:
    return {
        "job_id": job_id,
        "result_json": '{"lat": 45.0, "lon": 7.0}',
        "model_version": "1",
        "model_version_id": None,
        "cache_hit": False,
        "timings": {"inference_ms": 1.0},
    }


@pytest.fixture
def crowded_store(settings):
    """A job store on a schema of its own whose table already holds 20 000 finished jobs, as a
    service's does within its retention."""
    schema = f"crowded_{uuid.uuid4().hex[:8]}"
    with migrated_schema(settings.database_url, schema, pool_size=1, role=ROLE) as own:
        with own.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO jobs (job_id, status, created_at, finished_at, capture_time,"
                    " frequency_mhz, sample_rate_hz, n_samples, receivers, iq_sha256)"
                    " SELECT 'old-' || g, 'succeeded', now(), now(), now(), 145.5, 12000, 12000,"
                    " '[]', '' FROM generate_series(1, 20000) AS g"
                )
            )
            connection.execute(sa.text("ANALYZE jobs"))
        yield JobStore(own)


def test_recording_a_batch_reads_its_jobs_by_key_whatever_the_table_holds(crowded_store):
    jobs = [queued_job(published=True) for _ in range(8)]
    crowded_store.start_many(jobs)
    results = [finished_result(job.job_id) for job in jobs]
    raw = crowded_store.engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("EXPLAIN " + SUCCEED_MANY, succeed_parameters(results))
        plan = "\n".join(line for (line,) in cursor.fetchall())
        # The store runs it prepared: the plan made once for any batch must read by key too.
        form = prepared_form(SUCCEED_MANY)
        cursor.execute("SET plan_cache_mode = force_generic_plan")
        cursor.execute(form.prepare)
        parameters = succeed_parameters(results)
        cursor.execute("EXPLAIN " + form.execute, [parameters[n] for n in form.params])
        generic = "\n".join(line for (line,) in cursor.fetchall())
    finally:
        raw.rollback()
        raw.invalidate()  # it holds the statement outside the store's bookkeeping
    assert "Seq Scan on jobs" not in plan, plan
    assert "Seq Scan on jobs" not in generic, generic
    recorded = crowded_store.succeed_many(results)
    assert sorted(recorded) == sorted(job.job_id for job in jobs)
    assert crowded_store.succeed_many(results) == {}  # already final: recorded once


def test_an_unreachable_database_is_a_transient_error(settings):
    unreachable = create_engine("postgresql+psycopg2://heimdall@127.0.0.1:1/x", "s", role=ROLE)
    store = JobStore(unreachable)
    with pytest.raises(TRANSIENT_ERRORS):
        store.create(queued_job())
    with pytest.raises(TRANSIENT_ERRORS):
        store.get("any")
    unreachable.dispose()


def test_a_recorded_result_is_stored_compressed_with_lz4(engine):
    store = JobStore(engine)
    job = queued_job(published=True)
    store.start_many([job])
    ring = [[7.0 + i * 1e-4, 45.0 + i * 1e-4] for i in range(73)]
    result = {"lat": 45.0, "lon": 7.0, "ellipses": {level: ring for level in ("39", "68", "95")}}
    recorded = store.succeed(
        job.job_id,
        result=result,
        model_version="1",
        model_version_id=None,
        cache_hit=False,
        timings={"inference_ms": 1.0},
    )
    assert recorded is not None and recorded["status"] == "succeeded"
    with engine.connect() as connection:
        server = connection.dialect.server_version_info
        method = connection.execute(
            sa.text("SELECT pg_column_compression(result) FROM jobs WHERE job_id = :id"),
            {"id": job.job_id},
        ).scalar_one()
    if server < (14,):
        pytest.skip("PostgreSQL before 14 compresses with pglz only")
    assert method == "lz4"
    assert job_row(store, job.job_id)["result"] == result


def test_the_shim_keeps_a_database_connection_for_each_request_thread(settings, engine):
    """Every request thread of a shim process holding a connection at once, round after round,
    reuses the same PostgreSQL sessions: a pool smaller than the threads closed its overflow
    connections on return and opened new ones (a new backend) for the next requests."""
    from api_shim.services import build_services

    threads = 8
    services = build_services(settings.model_copy(update={"api_threads": threads}))
    together = threading.Barrier(threads)
    backends: set[int] = set()
    failures: list[BaseException] = []

    def requests() -> None:
        try:
            for _ in range(4):
                with services.jobs.engine.connect() as connection:
                    together.wait(timeout=10)  # every thread holds a connection now
                    backends.add(connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
                    together.wait(timeout=10)
                together.wait(timeout=10)  # every thread has given its connection back
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            failures.append(exc)

    try:
        running = [threading.Thread(target=requests) for _ in range(threads)]
        for thread in running:
            thread.start()
        for thread in running:
            thread.join(timeout=30)
    finally:
        services.jobs.engine.dispose()
    assert not failures
    assert len(backends) == threads


def test_a_statement_prepared_before_the_table_changed_shape_is_prepared_again(settings):
    """The store's statements are prepared once per connection; a migration that adds a column
    while the service runs makes a prepared ``SELECT *`` stale ("cached plan must not change
    result type"): the store prepares it again and answers, on the same connection."""
    schema = f"reshaped_{uuid.uuid4().hex[:8]}"
    with migrated_schema(settings.database_url, schema, pool_size=1, role=ROLE) as own:
        store = JobStore(own)
        job = queued_job()
        store.create(job)
        backend = store._driver_row("SELECT pg_backend_pid() AS pid", {})
        assert store.get(job.job_id) is not None  # prepared on the pooled connection
        with own.begin() as connection:
            connection.execute(sa.text("ALTER TABLE jobs ADD COLUMN added_later int"))
        row = store.get(job.job_id)
        assert row is not None and "added_later" in row
        assert store._driver_row("SELECT pg_backend_pid() AS pid", {}) == backend
