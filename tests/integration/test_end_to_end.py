"""A capture submitted through the real Flask app is located by a real worker process."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
import sqlalchemy as sa

from api_shim.app import create_app
from inference_worker.cli.processes import cli_process, wait_until
from inference_worker.core.contract import load_metadata
from inference_worker.core.ellipse import distance_m
from inference_worker.storage.schema import inference_logs, jobs
from inference_worker.storage.views import job_view
from tests.helpers import json_body
from tests.integration.helpers import free_port, submit_npy, wait_final, worker_env
from tests.integration.shim_processes import shim_answers


def assert_located(view: dict, capture) -> None:
    assert view["status"] == "succeeded", view
    result = view["result"]
    assert np.isfinite(
        [result["lat"], result["lon"], result["sigma_x_m"], result["sigma_y_m"]]
    ).all()
    assert set(result["ellipses"]) == {"68", "95"}
    assert result["ellipses"]["95"]["semi_major_m"] > result["ellipses"]["68"]["semi_major_m"]
    ring = result["ellipses"]["95"]["polygon"]["coordinates"][0]
    assert ring[0] == ring[-1] and len(ring) > 10
    # The estimate is somewhere in the receivers' region, not at (0, 0).
    assert distance_m(result["lat"], result["lon"], capture.lat, capture.lon) < 150_000
    # Every result says whether its capture lies in the model's domain, and why not.
    quality = result["quality"]
    assert isinstance(quality["reasons"], list) and quality["in_domain"] in (True, False, None)
    assert {r["code"] for r in quality["reasons"]} <= {
        "clipping",
        "off_band",
        "no_signal",
        "power_inconsistent",
    }
    assert {c["code"] for c in quality["cautions"]} <= {"outside_region"}
    assert quality["in_domain"] is (not quality["reasons"])
    assert len(quality["carrier_offset_hz"]) == 3
    # The caution's figures, as numbers: cautioned exactly where the evidence passes the line.
    evidence, threshold = quality["outside_evidence"], quality["outside_threshold"]
    assert evidence >= 0 and threshold > 0
    assert ("outside_region" in {c["code"] for c in quality["cautions"]}) is (evidence > threshold)


def test_json_capture_is_located_and_recorded_in_postgres_and_redis(
    client, worker, capture, engine, redis_client, settings
):
    response = client.post("/predict", json=json_body(capture))
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert body["status"] == "queued"
    assert body["status_url"] == f"/jobs/{body['job_id']}"

    view = wait_final(client, body["job_id"])

    assert_located(view, capture)
    assert view["cache_hit"] is False
    assert view["model_version"] == load_metadata(settings.model_dir).version
    assert {"queue_wait_ms", "features_ms", "inference_ms", "end_to_end_ms"} <= set(view["timings"])
    with engine.connect() as connection:
        row = (
            connection.execute(sa.select(jobs).where(jobs.c.job_id == body["job_id"]))
            .mappings()
            .one()
        )
        logs = (
            connection.execute(
                sa.select(inference_logs).where(inference_logs.c.job_id == body["job_id"])
            )
            .mappings()
            .all()
        )
    assert row["status"] == "succeeded" and row["result"]["lat"] == view["result"]["lat"]
    assert len(logs) == 1 and logs[0]["cache_hit"] is False and logs[0]["model_version_id"]
    stored = json.loads(redis_client.get(f"{settings.redis_prefix}result:{body['job_id']}"))
    assert stored["result"] == view["result"]
    # The claim-check blob is released once the result is recorded.
    assert redis_client.exists(f"{settings.redis_prefix}blob:{body['job_id']}") == 0


def test_json_capture_with_interleaved_float_lists_is_located(client, worker, simulator, rng):
    capture = simulator.simulate(rng, sample_rate_hz=12_000.0, duration_s=0.1)
    body = json_body(capture)
    body["iq_data"] = [row.view(np.float32).tolist() for row in capture.iq]
    response = client.post("/predict", json=body)
    assert response.status_code == 202, response.get_json()
    assert_located(wait_final(client, response.get_json()["job_id"]), capture)


@pytest.mark.parametrize(("rate", "duration"), [(12_000.0, 0.1), (192_000.0, 1.0), (48_000.0, 0.3)])
def test_npy_capture_at_any_rate_and_length_is_located(
    client, worker, simulator, rng, rate, duration
):
    capture = simulator.simulate(rng, sample_rate_hz=rate, duration_s=duration)
    response = submit_npy(client, capture)
    assert response.status_code == 202, response.get_json()
    assert response.headers["Location"] == response.get_json()["status_url"]
    assert_located(wait_final(client, response.get_json()["job_id"]), capture)


def test_receivers_in_another_order_give_the_same_estimate(client, worker, capture):
    first = wait_final(client, submit_npy(client, capture).get_json()["job_id"])
    order = [2, 0, 1]
    shuffled = type(capture)(
        **{
            **capture.__dict__,
            "iq": np.ascontiguousarray(capture.iq[order]),
            "receivers": tuple(capture.receivers[i] for i in order),
        }
    )
    second = wait_final(client, submit_npy(client, shuffled).get_json()["job_id"])
    assert second["result"]["lat"] == pytest.approx(first["result"]["lat"], abs=1e-6)
    assert second["result"]["lon"] == pytest.approx(first["result"]["lon"], abs=1e-6)


def test_resubmitted_capture_is_served_from_cache_without_running_the_model(
    client, worker, capture, engine
):
    first = wait_final(client, submit_npy(client, capture).get_json()["job_id"])
    answer = submit_npy(client, capture).get_json()
    second = wait_final(client, answer["job_id"])

    assert answer["status"] == "succeeded"  # answered at submission, no trip through the queue
    assert "answered_at_submission_ms" in second["timings"]
    assert first["job_id"] != second["job_id"]
    assert first["cache_hit"] is False and second["cache_hit"] is True
    assert second["result"] == first["result"]
    assert "inference_ms" not in second["timings"]
    with engine.connect() as connection:
        hit = connection.execute(
            sa.select(inference_logs.c.cache_hit).where(inference_logs.c.job_id == second["job_id"])
        ).scalar_one()
    assert hit is True


def test_capture_answered_at_submission_is_recorded_once_and_keeps_its_job_id(
    client, worker, capture, engine, stores
):
    """A cached capture's job is written final in one statement: its row, its log row and its
    view in Redis agree; its client job id is honoured like any other."""
    job_store, redis_store = stores
    wait_final(client, submit_npy(client, capture).get_json()["job_id"])
    job_id = f"acq-{uuid.uuid4()}"
    answer = submit_npy(client, capture, job_id=job_id)
    assert answer.status_code == 202
    assert answer.get_json()["status"] == "succeeded" and answer.get_json()["created"] is True

    row = job_store.get(job_id)
    assert row is not None and row["status"] == "succeeded" and row["cache_hit"] is True
    assert row["message"]["job_id"] == job_id and row["published_at"] is None  # never queued
    assert row["finished_at"] >= row["created_at"]
    assert redis_store.get_result(job_id) == job_view(row)  # the view as PostgreSQL gives it
    with engine.connect() as connection:
        logs = connection.execute(
            sa.select(inference_logs.c.cache_hit).where(inference_logs.c.job_id == job_id)
        ).all()
    assert [hit for (hit,) in logs] == [True]

    again = submit_npy(client, capture, job_id=job_id)  # the same id and capture: the same job
    assert again.status_code == 202
    assert again.get_json() | {"status_url": None} == {
        "job_id": job_id,
        "status": "succeeded",
        "created": False,
        "status_url": None,
    }
    other = capture.iq.copy()
    other[0, 0] += 1.0
    conflict = submit_npy(client, type(capture)(**{**capture.__dict__, "iq": other}), job_id=job_id)
    assert conflict.status_code == 409
    # The same capture asking for another model or frequency is another job: refused, named.
    asked = submit_npy(client, capture, job_id=job_id, model="champion", frequency_mhz=433.92)
    assert asked.status_code == 409
    refusal = asked.get_json()["error"]["message"]
    assert "asking otherwise" in refusal and "model (first: not given, now: 'champion')" in refusal
    assert f"frequency_mhz (first: {capture.frequency_mhz}, now: 433.92)" in refusal
    with engine.connect() as connection:
        count = connection.execute(
            sa.select(sa.func.count())
            .select_from(inference_logs)
            .where(inference_logs.c.job_id == job_id)
        ).scalar_one()
    assert count == 1


def test_same_client_job_id_submitted_twice_gives_one_job(
    client, worker, capture, engine, simulator, rng
):
    job_id = f"acq-{uuid.uuid4()}"
    first = submit_npy(client, capture, job_id=job_id)
    second = submit_npy(client, capture, job_id=job_id)

    assert first.status_code == second.status_code == 202
    assert first.get_json()["job_id"] == second.get_json()["job_id"] == job_id
    assert first.get_json()["created"] is True and second.get_json()["created"] is False
    wait_final(client, job_id)
    # One worker takes tasks in order: once a later job is final, any second task of this
    # job would have run.
    marker = simulator.simulate(rng, sample_rate_hz=12_000.0, duration_s=0.1)
    wait_final(client, submit_npy(client, marker).get_json()["job_id"])
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(sa.func.count()).where(jobs.c.job_id == job_id)
        ).scalar_one()
        logs = connection.execute(
            sa.select(sa.func.count()).where(inference_logs.c.job_id == job_id)
        ).scalar_one()
    assert rows == 1 and logs == 1


def test_client_job_id_reused_for_another_capture_is_a_conflict(
    client, worker, simulator, capture, rng
):
    job_id = f"acq-{uuid.uuid4()}"
    assert submit_npy(client, capture, job_id=job_id).status_code == 202
    other = simulator.simulate(rng, sample_rate_hz=12_000.0, duration_s=1.0)
    response = submit_npy(client, other, job_id=job_id)
    assert response.status_code == 409
    assert "different capture" in response.get_json()["error"]["message"]


def test_unknown_job_is_404(client):
    response = client.get("/jobs/no-such-job")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "job_not_found"


def test_health_reports_each_service_and_the_serving_worker(client, worker, settings):
    response = client.get("/health")
    body = response.get_json()
    assert response.status_code == 200, body
    assert body["status"] == "ok"
    for name in ("broker", "redis", "database"):
        assert body["checks"][name]["ok"] is True
    model = body["checks"]["model"]
    assert model["ok"] is True and model["workers"]
    assert model["workers"][0]["model_version"] == model["configured_version"]


def test_a_client_waits_for_its_job_in_one_request(client, worker, capture):
    job_id = submit_npy(client, capture).get_json()["job_id"]
    response = client.get(f"/jobs/{job_id}?wait=20")
    assert response.status_code == 200
    assert response.get_json()["status"] == "succeeded"  # woken by the worker, not polled


def test_a_wait_longer_than_the_limit_is_refused(client, worker, capture):
    job_id = submit_npy(client, capture).get_json()["job_id"]
    refused = client.get(f"/jobs/{job_id}?wait=3600")
    assert refused.status_code == 400 and refused.get_json()["error"]["code"] == "invalid_wait"
    assert client.get(f"/jobs/{job_id}?wait=soon").status_code == 400


def test_a_submission_can_wait_for_its_result_in_the_same_request(client, worker, capture):
    job_id = f"acq-{uuid.uuid4()}"
    response = submit_npy(client, capture, job_id=job_id, wait=20)
    assert response.status_code == 200, response.get_json()
    view = response.get_json()
    assert_located(view, capture)  # the job's view, as GET /jobs/<id> gives it
    assert view["job_id"] == job_id and response.headers["Location"] == f"/jobs/{job_id}"
    retried = submit_npy(client, capture, job_id=job_id, wait=20)  # the same job, final
    assert retried.status_code == 200 and retried.get_json() == view
    again = submit_npy(client, capture, wait=20)  # a new job, answered from the result cache
    assert again.status_code == 200 and again.get_json()["cache_hit"] is True
    assert again.get_json()["job_id"] != job_id


def test_the_python_client_submits_and_waits_in_one_request_to_a_real_shim(
    worker, settings, capture, tmp_path
):
    from api_shim.client import ShimClient

    port = free_port()
    env = {**worker_env(settings), "HEIMDALL_API_PORT": str(port)}
    with cli_process(["api", "--workers", "1"], tmp_path / "api.log", env) as api:
        client = ShimClient(f"http://127.0.0.1:{port}")
        wait_until("the shim", lambda: shim_answers(client.base_url), 60, api)
        view = client.submit_npy(
            capture.iq,
            sample_rate_hz=capture.sample_rate_hz,
            frequency_mhz=capture.frequency_mhz,
            receivers=list(capture.receivers),
            wait_s=20,
        )
        assert_located(view, capture)
        document = ShimClient.json_document(
            capture.iq,
            sample_rate_hz=capture.sample_rate_hz,
            frequency_mhz=capture.frequency_mhz,
            receivers=list(capture.receivers),
        )
        again = client.submit_json(document, wait_s=20)  # the same capture: from the cache
        assert again["status"] == "succeeded" and again["cache_hit"] is True


def test_a_bad_wait_on_a_submission_accepts_nothing(client, worker, capture, engine):
    job_id = f"acq-{uuid.uuid4()}"
    refused = submit_npy(client, capture, job_id=job_id, wait=3600)
    assert refused.status_code == 400 and refused.get_json()["error"]["code"] == "invalid_wait"
    assert client.get(f"/jobs/{job_id}").status_code == 404


def test_a_submission_that_waits_past_its_seconds_is_accepted_as_usual(own_queue, capture):
    local, _, _ = own_queue  # no worker consumes this queue
    client = create_app(local).test_client()
    before = submission_seconds(client)
    response = submit_npy(client, capture, wait=2)
    assert response.status_code == 202
    body = response.get_json()
    assert body["status"] == "queued" and body["status_url"] == f"/jobs/{body['job_id']}"
    # The submission metric counts until the capture was accepted, not the wait after it.
    (count, total), (count_before, total_before) = submission_seconds(client), before
    assert count - count_before == 1 and total - total_before < 2.0


def submission_seconds(client) -> tuple[float, float]:
    """The shim's ``heimdall_submission_seconds`` count and sum for accepted predictions."""
    found = {}
    for line in client.get("/metrics").get_data(as_text=True).splitlines():
        for part in ("count", "sum"):
            if line.startswith(
                f'heimdall_submission_seconds_{part}{{endpoint="predict",status="202"}}'
            ):
                found[part] = float(line.rsplit(" ", 1)[1])
    return found.get("count", 0.0), found.get("sum", 0.0)


def test_a_wait_ends_after_its_seconds_when_no_worker_finishes_the_job(own_queue, capture):
    local, _, _ = own_queue  # no worker consumes this queue
    client = create_app(local).test_client()
    job_id = submit_npy(client, capture).get_json()["job_id"]
    view = client.get(f"/jobs/{job_id}?wait=0.5").get_json()
    assert view["status"] == "queued"
