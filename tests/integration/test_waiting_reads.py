"""A request waiting for a job it has just seen accepted waits on Redis alone: the shim stores a
note of the new job beside its capture, so the wait needs no read of the job's row."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

from api_shim.app import create_app
from inference_worker.cli.processes import wait_until
from inference_worker.storage.database import JobStore
from tests.integration.helpers import free_port, submit_npy


def test_a_new_job_waits_on_its_note_in_redis_and_reads_no_row(own_queue, capture, monkeypatch):
    local, store, start_worker = own_queue  # no worker consumes this queue yet
    client = create_app(local).test_client()
    job_id = submit_npy(client, capture).get_json()["job_id"]
    assert json.loads(store.get_result_json(job_id)) == {
        "job_id": job_id,
        "status": "queued",
        "tenant": None,
    }
    assert store.get_result(job_id) is None  # a note, not a result
    assert client.get(f"/jobs/{job_id}").get_json()["status"] == "queued"  # a plain read: the row

    reads: list[str] = []
    row_of = JobStore.get

    def counted_get(jobs: JobStore, job: str) -> dict[str, Any] | None:
        reads.append(job)
        return row_of(jobs, job)

    monkeypatch.setattr(JobStore, "get", counted_get)
    answers: list = []
    waiting = threading.Thread(
        target=lambda: answers.append(client.get(f"/jobs/{job_id}?wait=30")), daemon=True
    )
    started = time.monotonic()
    waiting.start()
    with start_worker("worker") as worker:
        wait_until("the waiting read answered", lambda: bool(answers), 90, worker)
    view = answers[0].get_json()
    assert answers[0].status_code == 200 and view["status"] == "succeeded", view
    assert reads == []  # woken by the worker's announcement; the note said the job exists
    assert time.monotonic() - started < 30  # woken, not timed out
    assert json.loads(store.get_result_json(job_id))["status"] == "succeeded"  # replaced


def test_a_submission_the_broker_refuses_leaves_no_note(own_queue, capture, redis_client):
    local, store, _ = own_queue
    closed = f"amqp://guest:guest@127.0.0.1:{free_port()}//"  # nothing listens there
    app = create_app(local.model_copy(update={"broker_url": closed}))
    client = app.test_client()
    job_id = f"acq-{uuid.uuid4()}"
    try:
        refused = submit_npy(client, capture, job_id=job_id)
        assert refused.status_code == 503, refused.get_json()
        assert store.get_result_json(job_id) is None
        assert not redis_client.keys(f"{store.blob_key(job_id, '')}*")
        assert client.get(f"/jobs/{job_id}?wait=1").status_code == 404
    finally:  # this app's connections, closed rather than left to the garbage collector
        app.extensions["heimdall"].store.client.close()
        app.extensions["heimdall"].jobs.engine.dispose()
