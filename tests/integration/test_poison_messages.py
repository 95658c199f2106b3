"""Messages that bypass the shim: bad ones fail their job with the reason or are refused,
nothing from the wire is executed, and the worker keeps serving."""

from __future__ import annotations

import hashlib
import urllib.request
import uuid

import kombu
import pytest

from inference_worker.cli.processes import wait_until
from inference_worker.serving import dead_letters
from inference_worker.serving.dead_letters import DeadLetter, record_dead_letter
from tasks.app import inference_queue
from tasks.contract import TASK_NAME, read_message
from tests.helpers import capture_message, iq_digest
from tests.integration.helpers import produce, submit_npy, wait_final, wait_final_row


def publish(settings, body, *, serializer: str = "json", job_id: str | None = None) -> str:
    """Publish a Celery-protocol task message by hand, as a careless producer would."""
    task_id = job_id or str(uuid.uuid4())
    with kombu.Connection(settings.broker_url) as connection:
        producer = connection.Producer(serializer=serializer)
        producer.publish(
            [[body], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}],
            exchange=settings.queue,
            routing_key=settings.queue,
            headers={
                "lang": "py",
                "task": TASK_NAME,
                "id": task_id,
                "argsrepr": "",
                "kwargsrepr": "",
            },
            declare=[inference_queue(settings.queue, settings.max_deliveries)],
        )
    return task_id


@pytest.mark.parametrize(
    ("mangle", "store_blob", "fragment"),
    [
        (lambda m: {**m, "n_samples": "many"}, True, "n_samples"),
        (lambda m: {**m, "receivers": ["a", "b"]}, True, "receivers"),
        (lambda m: m, False, "missing"),
        (lambda m: {**m, "iq_sha256": "0" * 64}, True, "sha256"),
        (lambda m: {**m, "receivers": ["x1", "x2", "x3"]}, True, "receivers"),
        # year 10000 in UTC: PostgreSQL stored it, and no read of the row could give it back
        (lambda m: {**m, "capture_time": "9999-12-31T23:59:59-05:00"}, True, "capture_time"),
        (lambda m: {**m, "n_samples": 2**40}, True, "n_samples"),
        (lambda m: {**m, "sample_rate_hz": 1e308 * 10}, True, "sample_rate_hz"),
        # no service accepts it: designing its decimation filter took minutes of a pool process
        (lambda m: {**m, "sample_rate_hz": 1e12}, True, "too short"),
        (lambda m: {**m, "frequency_mhz": 1e300}, True, "frequency_mhz"),
        (lambda m: {**m, "receivers": ["torino", "montanaro", "gia\x00veno"]}, True, "receivers"),
    ],
    ids=[
        "wrong-type",
        "two-receivers",
        "key-without-blob",
        "garbage-blob",
        "unknown-receivers",
        "unreadable-time",
        "huge-n",
        "inf-rate",
        "absurd-rate",
        "huge-frequency",
        "nul-receiver",
    ],
)
def test_bad_message_fails_its_job_with_the_reason(
    worker, settings, stores, capture, mangle, store_blob, fragment
):
    _, store = stores
    job_id = f"poison-{uuid.uuid4()}"
    key = store.blob_key(job_id, iq_digest(capture.iq))
    if store_blob:
        store.put_blob(key, capture.iq.tobytes(), 60)
    publish(settings, mangle(capture_message(capture, job_id, key)), job_id=job_id)
    row = wait_final_row(stores[0], job_id)
    assert row is not None and row["status"] == "failed", row
    assert fragment in row["error"]


def test_a_tdoa_message_of_more_receivers_than_workers_locate_fails_at_once(
    worker, settings, stores, capture
):
    """A producer that does not check sent 40 receivers: the job's search would run to its time
    limit; it fails before its recordings are read, saying the bound."""
    _, store = stores
    job_id = f"poison-{uuid.uuid4()}"
    blob = b"RIFF" + bytes(3_996)  # never read
    digest = hashlib.sha256(blob).hexdigest()
    key = store.blob_key(job_id, digest)
    store.put_blob(key, blob, 60)
    names = [f"kiwi{i}" for i in range(40)]
    stations = [{"id": n, "lat": 45.0 + i / 100, "lon": 7.0 + i / 50} for i, n in enumerate(names)]
    message = {**capture_message(capture, job_id, key, iq_sha256=digest), "receivers": names}
    publish(settings, {**message, "method": "tdoa", "stations": stations, "parts": [100] * 40})
    row = wait_final_row(stores[0], job_id)
    assert row is not None and row["status"] == "failed", row
    assert f"40 receivers; a worker locates at most {settings.tdoa_max_receivers}" in row["error"]


def test_pickle_payload_is_never_executed_and_the_worker_keeps_serving(
    worker, settings, stores, client, capture, tmp_path
):
    marker = tmp_path / "executed"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    pickle_id = publish(settings, Exploit(), serializer="pickle")
    garbage_id = publish(settings, "not an object at all")
    # The worker refuses the pickle unread; the dead-letter consumer fails its job.
    refused = wait_final_row(stores[0], pickle_id)
    assert refused is not None and refused["status"] == "failed", refused
    assert "rejected" in refused["error"]
    assert not marker.exists()
    assert worker.poll() is None
    view = wait_final(client, submit_npy(client, capture).get_json()["job_id"])
    assert view["status"] == "succeeded"
    # The garbage message carries no job id; its job is the task id it travelled under.
    garbage = wait_final_row(stores[0], garbage_id)
    assert garbage["status"] == "failed" and "must be a JSON object" in garbage["error"], garbage


def test_a_dead_letter_whose_values_the_database_refuses_is_recorded_without_them(
    stores, capture, monkeypatch
):
    """A dead letter whose values PostgreSQL refused (a number past its column) was retried
    every second for ever, and every later dead letter waited behind it."""
    jobs, store = stores
    job_id = f"dead-values-{uuid.uuid4()}"
    valid = read_message(
        capture_message(capture, job_id, store.blob_key(job_id, iq_digest(capture.iq)))
    )
    # as if the contract let it through: PostgreSQL is what refuses it
    unchecked = valid.model_copy(update={"n_samples": 2**40})
    monkeypatch.setattr(dead_letters, "read_message", lambda payload: unchecked)
    letter = DeadLetter(job_id=job_id, payload={}, reason="rejected", count=1)
    assert record_dead_letter(jobs, store, letter, "rejected by a worker", 60)
    row = jobs.get(job_id)
    assert row is not None and (row["status"], row["error"]) == ("failed", "rejected by a worker")


@pytest.mark.parametrize(
    ("body", "task"),
    [
        (b"[" * 50_000 + b"]" * 50_000, TASK_NAME),
        (b'[["not json', TASK_NAME),
        (b"[[{}], {}, {}]", "heimdall.no-such-task"),
    ],
    ids=["nested-deep", "cut-short", "unknown-task"],
)
def test_a_body_that_does_not_decode_fails_its_job_and_leaves_the_worker_serving(
    worker, settings, stores, client, capture, body, task
):
    """The decoder's RecursionError stopped the whole worker ("Unrecoverable error"), and each
    worker after it on the queue; then Celery dropped a body it could not decode, its job never
    recorded. The worker rejects it: the dead-letter consumer fails the job its task id names
    (as it does for a task of a name no worker knows)."""
    task_id = f"undecodable-{uuid.uuid4()}"
    with kombu.Connection(settings.broker_url) as connection:
        connection.Producer().publish(
            body,
            content_type="application/json",
            content_encoding="utf-8",
            exchange=settings.queue,
            routing_key=settings.queue,
            headers={"lang": "py", "task": task, "id": task_id},
            declare=[inference_queue(settings.queue, settings.max_deliveries)],
        )
    refused = wait_final_row(stores[0], task_id)
    assert refused is not None and refused["status"] == "failed", refused
    assert "rejected" in refused["error"]
    view = wait_final(client, submit_npy(client, capture).get_json()["job_id"])
    assert view["status"] == "succeeded" and worker.poll() is None


def test_a_producer_reusing_a_job_id_leaves_the_job_to_its_first_capture(
    own_queue, stores, capture, simulator, rng
):
    """Two captures under one job id, queued before a real worker starts, then the second once
    more after the job finished: the job is located from the first and stays so, the worker
    counts each left-out message, and the left-out capture does not wait out its TTL."""
    local, store, start_worker = own_queue
    jobs, _ = stores
    other = simulator.simulate(rng, sample_rate_hz=capture.sample_rate_hz, duration_s=1.0)
    job_id = produce(local, capture, job_id=f"reused-{uuid.uuid4()}")
    assert produce(local, other, job_id=job_id) == job_id
    other_key = store.blob_key(job_id, iq_digest(other.iq))
    assert store.has_blob(other_key)
    with start_worker("reused") as worker:
        row = wait_final_row(jobs, job_id)
        assert row["status"] == "succeeded", row.get("error")
        assert row["iq_sha256"] == iq_digest(capture.iq) and row["attempts"] == 1
        produce(local, other, job_id=job_id)
        url = f"http://127.0.0.1:{worker.metrics_port}/metrics"

        def left_out() -> int:
            with urllib.request.urlopen(url, timeout=5) as response:
                lines = response.read().decode().splitlines()
            return sum(
                int(float(line.rsplit(" ", 1)[1]))
                for line in lines
                if line.startswith("heimdall_jobs_total{") and 'outcome="reused_id"' in line
            )

        wait_until("the worker to leave out both messages", lambda: left_out() == 2, 30)
    assert jobs.get(job_id) == row
    assert not store.has_blob(other_key)
