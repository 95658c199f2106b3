"""The plain job functions, one job and several at once, called directly with the real stores
and the real ONNX model."""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from inference_worker.serving.job_batches import run_jobs
from inference_worker.serving.jobs import JobServices, run_job
from inference_worker.serving.onnx_model import LocalizationModel
from inference_worker.storage.redis_store import RedisStore, connect
from inference_worker.storage.schema import inference_logs
from tasks.contract import read_message
from tasks.outbox import record_job, start_job
from tests.helpers import capture_message, iq_digest
from tests.integration.helpers import private_redis


@pytest.fixture(scope="module")
def services(stores, settings) -> JobServices:
    jobs, store = stores
    model = LocalizationModel(settings.model_dir)
    meta = model.metadata
    version_id = jobs.register_model(
        name=meta.name, version=meta.version, onnx_path="test", sha256=meta.sha256, metrics={}
    )
    return JobServices(jobs, store, model, version_id, result_ttl_s=60, cache_ttl_s=0)


def queue_job(
    services: JobServices, capture, *, store_blob: bool = True, record: bool = True
) -> dict:
    """Record a job as the shim does (without ``record``: as a producer leaves it, no row) and
    return its task message."""
    job_id = f"direct-{uuid.uuid4()}"
    key = services.redis.blob_key(job_id, iq_digest(capture.iq))
    message = capture_message(capture, job_id, key)
    if record:
        record_job(services.jobs, read_message(message))
    if store_blob:
        services.redis.put_blob(key, capture.iq.tobytes(), 60)
    return message


def test_redelivered_message_records_one_result(services, capture, engine):
    message = queue_job(services, capture)

    first = run_job(message, services)
    second = run_job(message, services)

    assert first.status == "succeeded" and second.status == "duplicate"
    with engine.connect() as connection:
        count = connection.execute(
            sa.select(sa.func.count()).where(inference_logs.c.job_id == message["job_id"])
        ).scalar_one()
    assert count == 1


def test_job_whose_capture_expired_fails_with_the_reason(services, capture):
    message = queue_job(services, capture, store_blob=False)
    outcome = run_job(message, services)
    assert outcome.status == "failed"
    row = services.jobs.get(message["job_id"])
    assert row["status"] == "failed" and "missing" in row["error"]


def test_job_whose_bytes_do_not_match_their_hash_fails(services, capture, simulator):
    message = queue_job(services, capture)
    services.redis.put_blob(message["blob_key"], capture.iq[:, ::-1].copy().tobytes(), 60)
    outcome = run_job(message, services)
    assert outcome.status == "failed" and "sha256" in str(outcome.error)


@pytest.mark.parametrize("alone", [True, False], ids=["one-job", "batch"])
def test_a_job_id_reused_for_another_capture_leaves_the_job_to_its_own(
    services, capture, simulator, rng, alone
):
    """A producer sends a second capture under a job's id: its message is left out, before
    the job ran and after it finished, and the job's own message locates the job's own capture
    (each capture waits under a key of its digest: the second replaced nothing)."""
    first = queue_job(services, capture)
    other = simulator.simulate(rng, sample_rate_hz=capture.sample_rate_hz, duration_s=1.0)
    key = services.redis.blob_key(first["job_id"], iq_digest(other.iq))
    second = capture_message(other, first["job_id"], key)
    services.redis.put_blob(key, other.iq.tobytes(), 60)  # as its producer does
    assert key != first["blob_key"]

    def run(message):
        return run_job(message, services) if alone else run_jobs([(message, None)], services)[0]

    assert run(second).status == "reused_id"
    row = services.jobs.get(first["job_id"])
    assert row["status"] == "queued" and row["attempts"] == 0  # left as it was
    assert run(first).status == "succeeded"
    located = services.jobs.get(first["job_id"])
    assert run(second).status == "reused_id"  # after it finished: told, not a redelivery
    assert run(first).status == "duplicate"
    assert services.jobs.get(first["job_id"]) == located


def test_malformed_message_fails_its_job_and_names_the_field(services, capture):
    message = queue_job(services, capture)
    del message["sample_rate_hz"]
    outcome = run_job(message, services)
    assert outcome.status == "failed" and "sample_rate_hz" in str(outcome.error)
    assert services.jobs.get(message["job_id"])["status"] == "failed"


def test_message_published_without_a_job_row_records_the_job(services, capture):
    message = queue_job(services, capture)
    message["job_id"] = f"producer-{uuid.uuid4()}"
    assert run_job(message, services).status == "succeeded"
    assert services.jobs.get(message["job_id"])["status"] == "succeeded"


@pytest.mark.parametrize("alone", [True, False], ids=["one-job", "batch"])
def test_a_producer_clock_ahead_of_the_database_gives_no_negative_queue_wait(
    services, capture, alone
):
    """A producer (or a shim) whose clock ran ahead of the worker's recorded a job created in
    the future, and its queue wait came out negative; every time is now the database's."""
    message = queue_job(services, capture, record=False)
    ahead = datetime.now(UTC) + timedelta(seconds=30)
    message["submitted_at"] = ahead.isoformat()
    if alone:
        outcome = run_job(message, services)
    else:
        outcome = run_jobs([(message, message["job_id"])], services)[0]
    assert outcome.status == "succeeded"
    row = services.jobs.get(message["job_id"])
    assert row["created_at"] <= row["started_at"] <= row["finished_at"]
    assert row["created_at"] < ahead - timedelta(seconds=20)
    assert 0 <= row["timings"]["queue_wait_ms"] < 10_000


def test_message_that_is_not_an_object_fails_without_a_job(services):
    outcome = run_job(["not", "a", "dict"], services)
    assert outcome.status == "failed" and outcome.job_id is None


# --- several jobs at once: the same results and the same guarantees ------------------------
def log_rows(engine, job_id: str) -> int:
    with engine.connect() as connection:
        return connection.execute(
            sa.select(sa.func.count()).where(inference_logs.c.job_id == job_id)
        ).scalar_one()


def test_a_batch_gives_each_job_the_result_it_gets_alone(services, simulator, rng, engine):
    captures = [simulator.simulate(rng, sample_rate_hz=12_000.0, duration_s=1.0) for _ in range(5)]
    alone = [run_job(queue_job(services, c), services) for c in captures]
    messages = [queue_job(services, c) for c in captures]

    outcomes = run_jobs([(m, m["job_id"]) for m in messages], services)

    assert [o.status for o in outcomes] == ["succeeded"] * 5
    assert [o.job_id for o in outcomes] == [m["job_id"] for m in messages]
    for message, single in zip(messages, alone, strict=True):
        row = services.jobs.get(message["job_id"])
        reference = services.jobs.get(single.job_id)
        assert row["status"] == "succeeded" and row["attempts"] == 1
        assert row["result"]["lat"] == pytest.approx(reference["result"]["lat"], abs=1e-9)
        assert row["result"]["lon"] == pytest.approx(reference["result"]["lon"], abs=1e-9)
        assert row["timings"]["batch_size"] == 5
        assert log_rows(engine, message["job_id"]) == 1
        cached = services.redis.get_result(message["job_id"])
        assert cached is not None and cached["status"] == "succeeded"
        assert cached["result"] == row["result"]
        assert services.redis.get_blob(message["blob_key"]) is None


def test_a_batched_jobs_queue_wait_ends_when_its_batch_starts(services, simulator, rng):
    """The queue wait of a batched job counts until the batch started it, as a single job's
    does, not until its result was ready (the batch's computation is not waiting)."""
    captures = [simulator.simulate(rng, sample_rate_hz=48_000.0, duration_s=1.0) for _ in range(8)]
    messages = [queue_job(services, c) for c in captures]

    run_jobs([(m, m["job_id"]) for m in messages], services)

    for message in messages:
        row = services.jobs.get(message["job_id"])
        waited_ms = (row["started_at"] - row["created_at"]).total_seconds() * 1e3
        ran_ms = (row["finished_at"] - row["started_at"]).total_seconds() * 1e3
        # Measured just after the start statement: nearer the start than the finish.
        assert row["timings"]["queue_wait_ms"] - waited_ms < ran_ms / 2


def test_a_batch_delivered_twice_records_one_result_per_job(services, simulator, rng, engine):
    messages = [
        queue_job(services, simulator.simulate(rng, sample_rate_hz=12_000.0, duration_s=1.0))
        for _ in range(3)
    ]
    items = [(m, m["job_id"]) for m in messages]
    # The same message twice in one batch, then the whole batch again.
    first = run_jobs([*items, items[0]], services)
    second = run_jobs(items, services)
    assert [o.status for o in first[1:3]] == ["succeeded"] * 2
    assert sorted([first[0].status, first[3].status]) == ["duplicate", "succeeded"]
    assert [o.status for o in second] == ["duplicate"] * 3
    for message in messages:
        assert log_rows(engine, message["job_id"]) == 1


def test_bad_jobs_fail_alone_and_the_rest_of_the_batch_succeeds(services, simulator, rng, caplog):
    good = queue_job(services, simulator.simulate(rng, sample_rate_hz=12_000.0, duration_s=1.0))
    missing = queue_job(
        services,
        simulator.simulate(rng, sample_rate_hz=12_000.0, duration_s=1.0),
        store_blob=False,
    )
    tampered_capture = simulator.simulate(rng, sample_rate_hz=12_000.0, duration_s=1.0)
    tampered = queue_job(services, tampered_capture)
    services.redis.put_blob(tampered["blob_key"], tampered_capture.iq[:, ::-1].copy().tobytes(), 60)
    unreadable = {**queue_job(services, tampered_capture), "n_samples": "many"}

    with caplog.at_level(logging.INFO, logger="inference_worker.serving.job_batches"):
        outcomes = run_jobs(
            [(m, m["job_id"]) for m in (good, missing, tampered, unreadable)], services
        )

    assert [o.status for o in outcomes] == ["succeeded", "failed", "failed", "failed"]
    assert "batch of 4 jobs: 3 failed, 1 succeeded" in caplog.messages  # the batch's line
    assert "missing" in str(outcomes[1].error)
    assert "sha256" in str(outcomes[2].error)
    assert "n_samples" in str(outcomes[3].error)
    for message in (missing, tampered, unreadable):
        assert services.jobs.get(message["job_id"])["status"] == "failed"


def test_a_capture_already_answered_comes_from_the_result_cache(services, simulator, rng):
    cached = replace(services, cache_ttl_s=60)
    capture = simulator.simulate(rng, sample_rate_hz=12_000.0, duration_s=1.0)
    first = queue_job(cached, capture)
    assert run_jobs([(first, first["job_id"])], cached)[0].cache_hit is False
    again = [queue_job(cached, capture), queue_job(cached, capture)]

    outcomes = run_jobs([(m, m["job_id"]) for m in again], cached)

    assert [(o.status, o.cache_hit) for o in outcomes] == [("succeeded", True)] * 2
    reference = cached.jobs.get(first["job_id"])["result"]
    for message in again:
        assert cached.jobs.get(message["job_id"])["result"] == reference


def test_a_batch_and_published_marks_on_the_same_jobs_never_deadlock(services, capture):
    """A worker's batch and a shim's published marks both change many rows: they lock them in
    the same order, so neither waits on the other in a cycle (PostgreSQL would abort one)."""
    import random
    import threading

    from tasks.contract import read_message
    from tasks.outbox import new_job

    messages = [read_message(queue_job(services, capture)) for _ in range(40)]
    errors: list[BaseException] = []

    def run(work) -> None:
        try:
            for round_ in range(25):
                work(random.Random(round_))
        except BaseException as exc:  # noqa: BLE001 (reported by the assert below)
            errors.append(exc)

    def start(rng: random.Random) -> None:
        services.jobs.start_many([new_job(m) for m in rng.sample(messages, len(messages))])

    def mark(rng: random.Random) -> None:
        ids = [m.job_id for m in rng.sample(messages, len(messages))]
        with services.jobs.engine.begin() as connection:  # unmark, so the next mark writes
            connection.exec_driver_sql(
                "UPDATE jobs SET published_at = NULL WHERE job_id IN (SELECT job_id FROM jobs"
                " WHERE job_id = ANY(%(ids)s) ORDER BY job_id FOR UPDATE)",
                {"ids": ids},
            )
        services.jobs.mark_published(*ids)

    threads = [threading.Thread(target=run, args=(work,)) for work in (start, mark, start, mark)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_a_batch_runs_with_redis_over_a_unix_socket(services, simulator, rng, tmp_path):
    """``unix://`` is a Redis URL the settings take: a batch fetches its capture and records
    its result over one, and a worker's beat is read back (redis-py 7.2.0 and 8.0.0 failed
    every command on such a connection, which the dependency's range leaves out)."""
    with private_redis(tmp_path, unix_socket=True) as url:
        store = RedisStore(connect(url), "heimdall-unix:")
        local = replace(services, redis=store)
        capture = simulator.simulate(rng, sample_rate_hz=12_000.0, duration_s=0.25)
        message = queue_job(local, capture)
        [outcome] = run_jobs([(message, message["job_id"])], local)
        assert outcome.status == "succeeded", outcome.error
        assert store.client.get(store.result_key(message["job_id"])) is not None
        store.heartbeat("host:1", {"worker_id": "host:1"}, 10)
        assert [w["worker_id"] for w in store.workers()] == ["host:1"]
        store.client.close()


@pytest.mark.parametrize("alone", [True, False], ids=["one-job", "batch"])
def test_a_redelivery_gives_redis_the_final_view_its_recording_did_not(services, capture, alone):
    """The delivery that recorded a job's result may not have reached Redis after it (Redis did
    not answer; or PostgreSQL, silent, ran the result statement the worker had given up on
    once it woke): Redis kept the note of a queued job for the result's lifetime, and every
    wait for the job lasted its whole length. The next delivery finds the job final and
    writes its view to Redis, dropping the capture."""
    message = queue_job(services, capture, store_blob=False)
    job_id, key = message["job_id"], message["blob_key"]
    note = {"job_id": job_id, "status": "queued", "tenant": None}
    services.redis.put_blob_and_note(key, capture.iq.tobytes(), 60, (job_id, note, 60))
    # What the first delivery did before Redis was out of its reach: the result, recorded.
    start_job(services.jobs, read_message(message))
    result = {"lat": 45.0, "lon": 7.6}
    recorded = services.jobs.succeed(
        job_id,
        result=result,
        model_version="2.1.0",
        model_version_id=None,
        cache_hit=False,
        timings={},
    )
    assert recorded is not None and services.redis.get_result(job_id) is None  # the note
    outcome = run_job(message, services) if alone else run_jobs([(message, None)], services)[0]
    assert outcome.status == "duplicate"
    view = services.redis.get_result(job_id)
    assert view is not None and view["status"] == "succeeded" and view["result"] == result
    assert not services.redis.has_blob(key)
