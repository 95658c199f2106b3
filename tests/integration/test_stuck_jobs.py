"""Operators see stuck jobs with what is known about them, requeue or fail them, and prune old
ones; anonymous callers see only the health status."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest
import sqlalchemy as sa

from inference_worker.cli.processes import wait_until
from inference_worker.serving import recovery
from inference_worker.storage.database import JobStore
from inference_worker.storage.engine import create_engine, migrate
from tasks.contract import read_message
from tasks.outbox import record_job
from tests.helpers import capture_message, iq_digest
from tests.integration.helpers import job_row, wait_final_row, worker_env
from tests.integration.registry_helpers import closed_port


@pytest.fixture
def own_schema(own_queue_factory, settings):
    """A queue, Redis prefix and PostgreSQL schema of this test's own (pruning touches a whole
    table), dropped afterwards."""
    schema = f"{settings.database_schema}_{uuid.uuid4().hex[:6]}"
    local, store, start_worker = own_queue_factory(database_schema=schema)
    engine = create_engine(local.database_url, schema)
    migrate(engine, schema)
    yield local, store, start_worker, engine
    engine.dispose()
    cleanup = sa.create_engine(local.database_url, poolclass=sa.pool.NullPool)
    with cleanup.begin() as connection:
        connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    cleanup.dispose()


def run_cli(local, *args: str, code: int = 0) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "inference_worker.cli", *args],
        env=worker_env(local),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == code, done.stderr[-2000:]
    return done


def cli(local, *args: str, code: int = 0) -> str:
    return run_cli(local, *args, code=code).stdout


def test_operators_list_requeue_and_fail_stuck_jobs_then_prune_them(own_schema, capture):
    local, store, start_worker, engine = own_schema
    jobs = JobStore(engine)
    # Given two submissions whose shim died before publishing: one after storing the capture
    for job_id, stored in (("stuck-with-capture", True), ("stuck-without-capture", False)):
        message = capture_message(capture, job_id, store.blob_key(job_id, iq_digest(capture.iq)))
        record_job(jobs, read_message(message), published=False)
        if stored:
            store.put_blob(message["blob_key"], capture.iq.tobytes(), 600)

    # When an operator lists the stuck jobs
    listed = {
        j["job_id"]: j
        for j in json.loads(cli(local, "jobs", "stuck", "--older-than", "0", "--json"))
    }
    assert set(listed) == {"stuck-with-capture", "stuck-without-capture"}
    assert listed["stuck-with-capture"]["capture_present"] is True
    assert listed["stuck-without-capture"]["capture_present"] is False
    assert not any(j["published"] for j in listed.values())
    print("\n" + cli(local, "jobs", "stuck", "--older-than", "0"))

    # and requeues the one whose capture is there, fails the other
    assert "published again" in cli(local, "jobs", "requeue", "stuck-with-capture")
    assert "failed" in cli(
        local, "jobs", "fail", "stuck-without-capture", "--reason", "capture lost in a crash"
    )

    # Then the requeued job runs, the failed one says why
    with start_worker("stuck") as worker:
        wait_until("the worker", lambda: bool(store.workers()), 60, worker)
        assert wait_final_row(jobs, "stuck-with-capture")["status"] == "succeeded"
    failed = job_row(jobs, "stuck-without-capture")
    assert failed["status"] == "failed" and "capture lost in a crash" in failed["error"]
    assert "no job is unfinished" in cli(local, "jobs", "stuck", "--older-than", "0")
    # and a job that was left as it was makes the command exit 1, naming it
    again = cli(local, "jobs", "requeue", "stuck-with-capture", "no-such-job", code=1)
    assert "stuck-with-capture: already succeeded" in again and "no-such-job: no such job" in again
    failed_again = cli(local, "jobs", "fail", "no-such-job", "--reason", "x", code=1)
    assert "no-such-job: not changed (unknown or final)" in failed_again

    # And retention deletes final jobs, never one that is not final
    record_job(jobs, read_message(capture_message(capture, "still-queued", "k")), published=True)
    assert "deleted 2" in cli(local, "jobs", "prune", "--older-than-days", "0.000001")
    assert jobs.get("stuck-with-capture") is None and jobs.get("still-queued") is not None


def test_retention_goes_on_round_after_round_until_it_has_caught_up(own_schema, monkeypatch):
    """A worker's upkeep deleted at most a million jobs and then waited an hour: above ~280
    jobs/s the table grew without bound. Now a round deletes a bounded share, and the next round
    goes on while old jobs are left; once caught up it looks again an hour later."""
    local, _, _, engine = own_schema
    jobs = JobStore(engine)
    for n in range(25):
        jobs.record_rejected(f"old-{n}", "made final for the test")
    time.sleep(0.2)  # older than the retention below
    monkeypatch.setattr(recovery, "PRUNE_BATCH", 10)
    monkeypatch.setattr(recovery, "PRUNE_BATCHES_A_ROUND", 1)
    settings = local.model_copy(update={"retention_days": 1e-6})  # 86 ms
    stores = recovery.open_stores(settings, role="heimdall-test")

    def publish(message):
        raise AssertionError(f"nothing to relay, yet {message.job_id} was published")

    upkeep = recovery.Upkeep(settings, lambda: stores, publish)
    try:
        left = []
        for _ in range(4):
            upkeep.run_once()
            left.append(sum(jobs.get(f"old-{n}") is not None for n in range(25)))
        assert left == [15, 5, 0, 0]
        jobs.record_rejected("old-late", "made final for the test")
        time.sleep(0.2)
        upkeep.run_once()  # caught up: the next look is an hour away
        assert jobs.get("old-late") is not None
    finally:
        stores.redis.client.close()
        stores.jobs.engine.dispose()


def test_more_stuck_jobs_than_a_listing_shows_are_counted_and_all_acted_on(own_schema, capture):
    """The listing stopped at the oldest 1 000 without saying so, and `--all-stuck` acted on
    those alone: after a large outage the operator could not tell that more were left."""
    local, _, _, engine = own_schema
    jobs = JobStore(engine)
    ids = [f"stuck-many-{n:04d}" for n in range(1_001)]
    for job_id in ids:
        record_job(jobs, read_message(capture_message(capture, job_id, "gone")), published=True)

    done = run_cli(local, "jobs", "stuck", "--older-than", "0", "--json")
    assert [j["job_id"] for j in json.loads(done.stdout)] == ids[:1_000]  # the oldest
    assert "the oldest 1000 of 1001 stuck jobs are listed" in done.stderr
    fewer = run_cli(local, "jobs", "stuck", "--older-than", "0", "--limit", "2")
    assert "the oldest 2 of 1001" in fewer.stderr

    out = cli(local, "jobs", "fail", "--all-stuck", "--reason", "test", "--older-than", "0")
    assert out.count(": failed") == 1_001, out[-500:]
    assert "no job is unfinished" in cli(local, "jobs", "stuck", "--older-than", "0")


def test_a_store_that_is_down_is_named_in_one_line(own_schema, capture):
    """The operators' tools name the store that failed, where they asked it (its password
    hidden) and the driver's reason, in one line: not SQLAlchemy's wrapping, nor its link."""
    local, store, _, engine = own_schema
    message = capture_message(capture, "stuck-asking-redis", store.blob_key("x", "y"))
    record_job(JobStore(engine), read_message(message), published=False)  # Redis is asked of it
    with closed_port() as port:
        for variable, url, named in (
            (
                "HEIMDALL_DATABASE_URL",
                f"postgresql+psycopg2://postgres:hidden@127.0.0.1:{port}/test",
                f"the job database at postgresql+psycopg2://postgres:***@127.0.0.1:{port}/test",
            ),
            (
                "HEIMDALL_REDIS_URL",
                f"redis://127.0.0.1:{port}/0",
                f"Redis at redis://127.0.0.1:{port}/0",
            ),
        ):
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "inference_worker.cli",
                    "jobs",
                    "stuck",
                    "--older-than",
                    "0",
                ],
                env={**worker_env(local), variable: url},
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 2, done.stderr[-2000:]
            assert done.stderr.startswith(f"error: {named} is unavailable: "), done.stderr
            assert "refused" in done.stderr.lower() and "hidden" not in done.stderr
            assert len(done.stderr.strip().splitlines()) == 1, done.stderr
