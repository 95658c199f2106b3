"""The plain job function, called directly with the real stores and the real ONNX model."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from inference_worker.serving.jobs import JobServices, run_job
from inference_worker.serving.onnx_model import LocalizationModel
from inference_worker.storage.schema import inference_logs
from tasks.contract import read_message
from tasks.outbox import record_job
from tests.helpers import capture_message


@pytest.fixture(scope="module")
def services(stores, settings) -> JobServices:
    jobs, store = stores
    model = LocalizationModel(settings.model_dir)
    meta = model.metadata
    version_id = jobs.register_model(
        name=meta.name, version=meta.version, onnx_path="test", sha256=meta.sha256, metrics={}
    )
    return JobServices(jobs, store, model, version_id, result_ttl_s=60, cache_ttl_s=0)


def queue_job(services: JobServices, capture, *, store_blob: bool = True) -> dict:
    """Record a job as the shim does and return its task message."""
    job_id = f"direct-{uuid.uuid4()}"
    key = services.redis.blob_key(job_id)
    message = capture_message(capture, job_id, key)
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
    assert outcome.status == "failed" and "sha256" in outcome.error


def test_malformed_message_fails_its_job_and_names_the_field(services, capture):
    message = queue_job(services, capture)
    del message["sample_rate_hz"]
    outcome = run_job(message, services)
    assert outcome.status == "failed" and "sample_rate_hz" in outcome.error
    assert services.jobs.get(message["job_id"])["status"] == "failed"


def test_message_published_without_a_job_row_records_the_job(services, capture):
    message = queue_job(services, capture)
    message["job_id"] = f"producer-{uuid.uuid4()}"
    assert run_job(message, services).status == "succeeded"
    assert services.jobs.get(message["job_id"])["status"] == "succeeded"


def test_message_that_is_not_an_object_fails_without_a_job(services):
    outcome = run_job(["not", "a", "dict"], services)
    assert outcome.status == "failed" and outcome.job_id is None
