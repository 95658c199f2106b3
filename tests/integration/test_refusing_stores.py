"""Stores in a passing state that refuse work — a Redis replica until a failover promotes it,
a replica whose primary is gone, a Redis that cannot save to disk, a PostgreSQL that takes no
writes — are a service unavailable, as one that is down: a 503 and nothing kept at the shim,
retries and a batch handed back in a worker, never a 500 or a job failed for it. (The broker's
refusals: ``test_refusing_broker``.)"""

from __future__ import annotations

import shutil
import urllib.request
import uuid

import pytest
import redis
import sqlalchemy as sa

from api_shim.app import create_app
from inference_worker.cli.processes import wait_until
from inference_worker.storage.database import JobStore
from tests.integration.helpers import (
    free_port,
    private_redis,
    submit_npy,
    wait_final,
)


@pytest.fixture
def read_only_redis(tmp_path):
    """A replica (of a Redis of this test's own): it answers reads and refuses writes."""
    with private_redis(tmp_path / "primary") as primary:
        replica_of = ("--replicaof", "127.0.0.1", primary.rsplit(":", 1)[1].split("/")[0])
        with private_redis(tmp_path / "replica", *replica_of) as replica:
            yield replica


@pytest.fixture
def masterless_redis(tmp_path):
    """A replica whose primary is gone, set not to serve stale data: it answers MASTERDOWN."""
    gone = str(free_port())
    options = ("--replicaof", "127.0.0.1", gone, "--replica-serve-stale-data", "no")
    with private_redis(tmp_path, *options) as replica:
        yield replica


@pytest.fixture
def redis_that_cannot_persist(tmp_path):
    """A Redis set to snapshot to a folder that is then removed, and a function that makes its
    next snapshot fail: from then on it answers writes with MISCONF (its default
    ``stop-writes-on-bgsave-error``), as when its disk is full or unwritable."""
    folder = tmp_path / "snapshots"
    with private_redis(folder, "--save", "3600 1") as url:
        client = redis.Redis.from_url(url)

        def break_persistence() -> None:
            shutil.rmtree(folder)
            client.bgsave()
            wait_until(
                "the snapshot failed",
                lambda: client.info("persistence")["rdb_last_bgsave_status"] == "err",
                30,
            )

        try:
            yield url, client, break_persistence
        finally:  # no snapshot at shutdown either: it would fail, and Redis would not stop
            client.config_set("save", "")
            client.close()


def refused_submissions(client) -> float:
    """The shim's count of submissions answered 503 (``HeimdallSubmissionsRefused`` reads it)."""
    metric = 'heimdall_submission_seconds_count{endpoint="predict",status="503"}'
    for line in client.get("/metrics").get_data(as_text=True).splitlines():
        if line.startswith(metric):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def worker_retries(worker) -> float:
    """The worker's ``heimdall_store_retries_total{store="redis"}`` (what the alert on waiting
    workers reads), summed over its processes."""
    url = f"http://127.0.0.1:{worker.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    metric = 'heimdall_store_retries_total{store="redis"}'
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(metric)
    )


def test_a_redis_that_cannot_persist_is_a_store_unavailable_and_loses_nothing(
    own_queue_factory, redis_that_cannot_persist, engine, capture, tmp_path
):
    """MISCONF was an internal error: the shim answered 500 and a worker failed the jobs it held.
    Now a submission is a 503 that keeps nothing, and a job accepted before waits in the queue
    (the worker retries, then hands it back) until Redis takes writes again."""
    url, redis_client, break_persistence = redis_that_cannot_persist
    local, _, start_worker = own_queue_factory(redis_url=url)
    app = create_app(local)
    client = app.test_client()
    accepted = submit_npy(client, capture, job_id="persist-1")
    assert accepted.status_code == 202, accepted.get_json()
    break_persistence()

    refusals_before = refused_submissions(client)
    refused = submit_npy(client, capture, job_id="persist-2")
    assert refused.status_code == 503, refused.get_json()
    assert refused.get_json()["error"]["message"].startswith("Redis is unavailable")
    assert JobStore(engine).get("persist-2") is None
    assert refused_submissions(client) == refusals_before + 1  # what the refusals alert reads

    log = tmp_path / "worker.log"
    with start_worker("worker") as worker:
        wait_until(
            "the worker retrying its batch",
            lambda: log.exists() and "transient store error" in log.read_text(),
            90,
            worker,
        )
        row = JobStore(engine).get("persist-1")
        assert row is not None and row["status"] != "failed", row
        wait_until("the retry counted", lambda: worker_retries(worker) > 0, 30, worker)
        redis_client.config_set("stop-writes-on-bgsave-error", "no")  # the disk is back
        view = wait_final(client, "persist-1")
    assert view["status"] == "succeeded", view
    app.extensions["heimdall"].finished.close()  # its Redis goes with the test


def test_a_replica_without_its_primary_is_a_store_unavailable_for_reads_too(
    own_queue_factory, masterless_redis, capture
):
    """Reads of the result cache answered MASTERDOWN (a 500): the shim reads the job's row
    instead, as when Redis is down, and a submission is a 503."""
    local, _, _ = own_queue_factory(redis_url=masterless_redis)
    client = create_app(local).test_client()
    unknown = client.get("/jobs/no-such-job")
    assert unknown.status_code == 404, unknown.get_json()
    refused = submit_npy(client, capture, job_id="masterless-1")
    assert refused.status_code == 503, refused.get_json()


def test_a_read_only_redis_is_a_store_unavailable_not_an_internal_error(
    own_queue_factory, read_only_redis, engine, capture
):
    """A replica refuses writes (READONLY), as during a failover until it is promoted: the shim
    answers 503 and keeps nothing of the submission (it answered 500), and the worker's store
    retries treat it as a Redis that is down rather than failing the batch's jobs."""
    local, _, _ = own_queue_factory(redis_url=read_only_redis)
    client = create_app(local).test_client()
    response = submit_npy(client, capture, job_id="read-only-1")
    assert response.status_code == 503, response.get_json()
    assert response.get_json()["error"]["message"].startswith("Redis is unavailable")
    assert JobStore(engine).get("read-only-1") is None


@pytest.fixture
def read_only_database(settings, engine):
    """A role of this test's own whose transactions are read-only (as on a standby), with the
    rights the service's own role has on the test schema; dropped afterwards."""
    role = f"heimdall_read_only_{uuid.uuid4().hex[:8]}"
    schema = settings.database_schema
    with engine.connect() as connection:
        connection.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))
        connection.execute(sa.text(f'ALTER ROLE "{role}" SET default_transaction_read_only = on'))
        connection.execute(sa.text(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"'))
        rights = "SELECT, INSERT, UPDATE, DELETE ON ALL TABLES"
        connection.execute(sa.text(f'GRANT {rights} IN SCHEMA "{schema}" TO "{role}"'))
    try:
        yield (
            sa.make_url(settings.database_url)
            .set(username=role)
            .render_as_string(hide_password=False)
        )
    finally:
        with engine.connect() as connection:
            connection.execute(sa.text(f'DROP OWNED BY "{role}"'))
            connection.execute(sa.text(f'DROP ROLE "{role}"'))


def test_a_database_that_takes_no_writes_is_a_store_unavailable(
    own_queue_factory, read_only_database, engine, capture
):
    """A read-only transaction (a standby, a database switched read-only) answered 500 at the
    shim, and failed a worker's jobs as an internal error."""
    local, _, _ = own_queue_factory(database_url=read_only_database)
    app = create_app(local)
    try:
        response = submit_npy(app.test_client(), capture, job_id="read-only-db-1")
        assert response.status_code == 503, response.get_json()
        assert "the job database is unavailable" in response.get_json()["error"]["message"]
        assert JobStore(engine).get("read-only-db-1") is None
    finally:
        app.extensions["heimdall"].jobs.engine.dispose()
