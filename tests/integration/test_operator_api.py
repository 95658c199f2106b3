"""Batch submission, ellipses for maps, metrics, the producer client and the people's CLI."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from dataclasses import replace

import numpy as np
import pytest

from inference_worker.cli.processes import cli_process, wait_until
from tasks.producer import CaptureProducer
from tests.helpers import json_body, npy_bytes
from tests.integration.helpers import free_port, produce, submit_npy, wait_final


def test_json_batch_accepts_the_good_captures_and_names_what_is_wrong_with_the_others(
    client, worker, simulator, rng
):
    good = [simulator.simulate(rng, sample_rate_hz=12_000.0, duration_s=0.25) for _ in range(2)]
    bad = json_body(good[0])
    bad["receivers"] = ["torino", "montanaro", "nowhere"]
    response = client.post(
        "/predict-batch", json={"captures": [json_body(good[0]), bad, json_body(good[1])]}
    )

    body = response.get_json()
    assert response.status_code == 202, body
    assert body["accepted"] == 2 and body["rejected"] == 1
    assert (
        body["jobs"][1]["index"] == 1 and "unknown receiver" in body["jobs"][1]["error"]["message"]
    )
    for item in (body["jobs"][0], body["jobs"][2]):
        assert wait_final(client, item["job_id"])["status"] == "succeeded"
    batch = client.get(body["status_url"]).get_json()
    assert batch["counts"] == {"succeeded": 2}
    assert {j["job_id"] for j in batch["jobs"]} == {
        body["jobs"][0]["job_id"],
        body["jobs"][2]["job_id"],
    }


def test_binary_batch_of_k_captures_is_located(client, worker, simulator, capture, rng):
    captures = [simulator.simulate(rng, sample_rate_hz=12_000.0, duration_s=1.0) for _ in range(3)]
    stack = np.stack([c.iq for c in captures])
    response = client.post(
        "/predict-batch",
        data=npy_bytes(stack),
        content_type="application/x-npy",
        query_string={
            "sample_rate_hz": 12_000.0,
            "frequency_mhz": 145.5,
            "receivers": ",".join(capture.receivers),
        },
    )
    body = response.get_json()
    assert response.status_code == 202, body
    assert body["accepted"] == 3
    views = [wait_final(client, item["job_id"]) for item in body["jobs"]]
    assert all(v["status"] == "succeeded" and v["batch_id"] == body["batch_id"] for v in views)


def test_batch_over_the_limit_is_413_and_an_all_bad_batch_is_422(client, settings, capture):
    too_many = {"captures": [{"iq_data": "AAAA"}] * (settings.max_batch_captures + 1)}
    assert client.post("/predict-batch", json=too_many).status_code == 413
    all_bad = client.post("/predict-batch", json={"captures": [{"iq_data": 5}, "nope"]})
    assert all_bad.status_code == 422
    assert all_bad.get_json()["accepted"] == 0 and all_bad.get_json()["batch_id"] is None


def test_uncertainty_ellipse_is_ready_to_draw(client, worker, capture):
    job_id = submit_npy(client, capture).get_json()["job_id"]
    view = wait_final(client, job_id)

    response = client.get("/uncertainty-ellipse", query_string={"job_id": job_id})
    body = response.get_json()
    assert response.status_code == 200, body
    assert set(body["ellipses"]) == {"68", "95"}
    assert (
        body["ellipses"]["95"]["semi_major_m"] == view["result"]["ellipses"]["95"]["semi_major_m"]
    )
    kinds = [f["properties"]["kind"] for f in body["geojson"]["features"]]
    assert kinds == ["estimate", "ellipse", "ellipse", "receiver", "receiver", "receiver"]
    assert body["geojson"]["features"][0]["geometry"]["coordinates"] == [
        view["result"]["lon"],
        view["result"]["lat"],
    ]
    with_geojson = client.get(f"/jobs/{job_id}", query_string={"include": "geojson"}).get_json()
    assert with_geojson["geojson"] == body["geojson"]


def test_uncertainty_ellipse_errors_say_what_is_missing(client):
    assert client.get("/uncertainty-ellipse").status_code == 400
    assert client.get("/uncertainty-ellipse", query_string={"job_id": "nope"}).status_code == 404


def test_shim_metrics_are_prometheus_text_with_submissions_and_queue_depth(client, worker, capture):
    assert submit_npy(client, capture).status_code == 202
    response = client.get("/metrics")
    text = response.get_data(as_text=True)
    assert response.status_code == 200 and response.mimetype == "text/plain"
    assert 'heimdall_submission_seconds_count{endpoint="predict",status="202"}' in text
    assert "heimdall_queue_messages{" in text and "heimdall_queue_consumers{" in text
    gauges = {
        name: float(value)
        for name, value in re.findall(r"^(heimdall_database_connections\S*) (\S+)$", text, re.M)
    }
    everyone, ours = (
        gauges[f'heimdall_database_connections{{owner="{owner}"}}'] for owner in ("all", "heimdall")
    )
    assert everyone >= ours >= 1  # the scrape's own connection among heimdall's
    assert gauges["heimdall_database_connections_allowed"] > everyone


def test_worker_serves_job_metrics_from_all_its_processes(client, worker, capture, settings):
    wait_final(client, submit_npy(client, capture).get_json()["job_id"])
    url = f"http://127.0.0.1:{worker.metrics_port}/metrics"

    def scrape() -> str:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()

    def counted() -> bool:
        # the pool process counts a job after its result is recorded: wait for it
        jobs = [line for line in scrape().splitlines() if line.startswith("heimdall_jobs_total{")]
        return any('method="model"' in j and 'outcome="succeeded"' in j for j in jobs)

    wait_until("the worker to count the job", counted, 30)
    text = scrape()
    assert "heimdall_inference_seconds_bucket" in text
    assert "heimdall_cache_lookups_total" in text


def test_producer_enqueues_straight_onto_rabbitmq_and_waits_for_the_result(
    worker, settings, capture, stores
):
    jobs, _ = stores
    job_id = produce(settings, capture)
    with CaptureProducer(
        redis_url=settings.redis_url, redis_prefix=settings.redis_prefix
    ) as client:
        view = client.wait(job_id, timeout_s=30)
    assert view["status"] == "succeeded"
    row = jobs.get(job_id)
    assert row is not None and row["status"] == "succeeded"


def test_cli_submits_a_capture_file_and_prints_the_result(worker, settings, capture, tmp_path):
    path = tmp_path / "capture.npy"
    np.save(path, capture.iq)
    raw = tmp_path / "capture.c64"
    capture.iq.tofile(raw)
    env = {
        **os.environ,
        "HEIMDALL_QUEUE": settings.queue,
        "HEIMDALL_REDIS_PREFIX": settings.redis_prefix,
        "HEIMDALL_DATABASE_SCHEMA": settings.database_schema,
    }
    common = [
        "--sample-rate",
        "12000",
        "--frequency-mhz",
        "145.5",
        "--receivers",
        ",".join(capture.receivers),
    ]
    for args in ([str(path)], [str(raw), "--raw"]):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "inference_worker.cli",
                "submit",
                *args,
                *common,
                "--via",
                "queue",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert "succeeded" in done.stdout and "95% ellipse" in done.stdout


def test_cli_says_what_it_cannot_reach_or_wait_for_without_a_traceback(
    own_queue, capture, tmp_path
):
    """An operator's mistakes and outages read as one line and an exit code, not a stack."""
    local, _, _ = own_queue
    path = tmp_path / "capture.npy"
    np.save(path, capture.iq)
    closed = free_port()  # nothing listens there
    env = {
        **os.environ,
        "HEIMDALL_QUEUE": local.queue,  # no worker consumes it
        "HEIMDALL_REDIS_PREFIX": local.redis_prefix,
        "HEIMDALL_DATABASE_SCHEMA": local.database_schema,
    }
    submit = ["submit", str(path), "--sample-rate", "12000", "--frequency-mhz", "145.5"]
    submit += ["--receivers", ",".join(capture.receivers)]

    def cli(*args: str, **more_env: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "inference_worker.cli", *args],
            env={**env, **more_env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "Traceback" not in done.stderr, done.stderr
        return done

    shim_down = f"http://127.0.0.1:{closed}"
    for args in (["status", "some-job", "--url", shim_down], [*submit, "--url", shim_down]):
        done = cli(*args)
        assert done.returncode == 2
        assert f"cannot reach the shim at {shim_down}" in done.stderr
    broker_down = cli(
        *submit, "--via", "queue", HEIMDALL_BROKER_URL=f"amqp://guest:guest@127.0.0.1:{closed}//"
    )
    assert broker_down.returncode == 2
    assert "error: the message broker is unavailable; retry later" in broker_down.stderr
    waited = cli(*submit, "--via", "queue", "--timeout", "0.5")
    assert waited.returncode == 1
    assert "submitted job" in waited.stdout and "still not finished after 0.5 s" in waited.stderr
    job_id = waited.stdout.split()[2]
    assert f"`heimdall-inference status {job_id}` shows it" in waited.stderr


def test_servers_refuse_an_address_in_use_in_one_line(own_queue):
    """The shim and Flower started on a port another process holds say so and exit 2 (gunicorn
    retried for five seconds, Flower ended in a traceback); a demo that needed the shim there
    says that it could not start it."""
    local, _, _ = own_queue
    env = {
        **os.environ,
        "HEIMDALL_QUEUE": local.queue,
        "HEIMDALL_REDIS_PREFIX": local.redis_prefix,
        "HEIMDALL_DATABASE_SCHEMA": local.database_schema,
    }
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        for args, server in ((["api"], "the shim"), (["flower"], "Flower")):
            done = subprocess.run(
                [sys.executable, "-m", "inference_worker.cli", *args, "--port", str(port)],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 2, done.stderr
            assert f"error: {server} cannot listen on 127.0.0.1:{port}" in done.stderr
            assert "Traceback" not in done.stderr
        demo = subprocess.run(
            [sys.executable, "-m", "inference_worker.cli", "demo", "--captures", "1"],
            env={**env, "HEIMDALL_API_PORT": str(port)},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert demo.returncode == 2, demo.stderr
    assert "error: the HTTP shim exited with code 2" in demo.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in demo.stderr  # the shim's log, shown
    assert "Traceback" not in demo.stderr


def test_openapi_document_is_served(client):
    document = client.get("/openapi.json").get_json()
    assert document["openapi"].startswith("3.")
    assert {
        "/predict",
        "/predict-batch",
        "/jobs/{job_id}",
        "/uncertainty-ellipse",
        "/health",
    } <= set(document["paths"])


def test_flower_shows_the_worker_and_its_tasks_behind_basic_auth(
    worker, settings, capture, client, tmp_path
):
    port = free_port()
    password = uuid.uuid4().hex
    env = {
        **os.environ,
        "HEIMDALL_QUEUE": settings.queue,
        "HEIMDALL_FLOWER_PORT": str(port),
        "HEIMDALL_FLOWER_BASIC_AUTH": f"operator:{password}",
    }
    base = f"http://127.0.0.1:{port}"
    auth = "Basic " + base64.b64encode(f"operator:{password}".encode()).decode()

    def get(path: str, with_auth: bool = True) -> bytes:
        headers = {"Authorization": auth} if with_auth else {}
        request = urllib.request.Request(base + path, headers=headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read()

    def up() -> bool:
        try:
            get("/healthcheck")
        except OSError:
            return False
        return True

    with cli_process(["flower"], tmp_path / "flower.log", env) as flower:
        wait_until("Flower", up, 30, flower)
        job_id = submit_npy(client, capture).get_json()["job_id"]
        wait_final(client, job_id)
        with pytest.raises(urllib.error.HTTPError) as refused:
            get("/api/workers", with_auth=False)
        assert refused.value.code == 401
        refused.value.close()

        # Flower waits a second for the workers' replies when it inspects them (a refresh made
        # while its own inspection at start runs joins that one); a worker on a busy host may
        # answer later, and a later refresh finds it.
        def worker_listed() -> bool:
            workers = json.loads(get("/api/workers?refresh=1"))
            return any(name.startswith("heimdall-") for name in workers)

        wait_until("Flower listing the worker", worker_listed, 30, flower)

        # Flower learns of tasks from the workers' events, which it turns on in the workers (every
        # 5 s): a task run once they are on shows up.
        ran: list[str] = []

        def seen_by_flower() -> bool:
            fresh = replace(capture, iq=capture.iq * np.complex64(1.0 + 1e-6 * (len(ran) + 1)))
            ran.append(wait_final(client, submit_npy(client, fresh).get_json()["job_id"])["job_id"])
            tasks = json.loads(get("/api/tasks"))
            return any(job_id in tasks for job_id in ran)

        wait_until("Flower seeing a task", seen_by_flower, 60, interval_s=0.5)
