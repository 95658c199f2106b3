"""The throughput benchmark's yardstick for the shim does a submission's whole work: a row, the
capture in Redis, a confirmed task on the queue; and refuses what is not a capture."""

from __future__ import annotations

import importlib
import io
import json
import os
import urllib.request
import uuid
from pathlib import Path

import kombu
import numpy as np
import psycopg2
import pytest

from inference_worker.cli import bootstrap
from inference_worker.cli.processes import managed_process, wait_until
from tests.integration.helpers import free_port
from tests.integration.shim_processes import shim_answers
from tools.bench_service import MINIMAL_SERVERS, ROOT, server_command
from tools.minimal_shim import libpq_form


@pytest.fixture
def minimal(own_queue, redis_client, monkeypatch):
    settings, _, _ = own_queue
    bootstrap.declare_queues(settings)
    schema = f"minimal_{uuid.uuid4().hex[:8]}"
    libpq_url = libpq_form(settings.database_url)
    for name, value in {
        "MINIMAL_DATABASE_URL": libpq_url,
        "MINIMAL_SCHEMA": schema,
        "MINIMAL_REDIS_URL": settings.redis_url,
        "MINIMAL_REDIS_PREFIX": settings.redis_prefix,
        "MINIMAL_BROKER_URL": settings.broker_url,
        "MINIMAL_QUEUE": settings.queue,
    }.items():
        monkeypatch.setenv(name, value)
    module = importlib.reload(importlib.import_module("tools.minimal_shim"))
    module.create_table(libpq_url, schema)
    yield module, settings, libpq_url, schema
    module.close_connections()
    connection = psycopg2.connect(libpq_url)
    with connection, connection.cursor() as cursor:
        cursor.execute(f'DROP SCHEMA "{schema}" CASCADE')
    connection.close()


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def test_accepts_a_capture_with_the_shims_work(minimal, redis_client) -> None:
    module, settings, libpq_url, schema = minimal
    iq = (np.random.default_rng(1).standard_normal((3, 4096)) * (1 + 1j)).astype(np.complex64)
    body = npy(iq)
    answer = module.app.test_client().post(
        "/predict?sample_rate_hz=12000&frequency_mhz=145.5&receivers=a,b,c&job_id=m-1",
        data=body,
        content_type="application/x-npy",
    )
    assert answer.status_code == 202, answer.get_data(as_text=True)
    assert answer.get_json() == {"job_id": "m-1", "status": "queued"}

    connection = psycopg2.connect(libpq_url)
    with connection, connection.cursor() as cursor:
        cursor.execute(f'SELECT status, sha256, receivers FROM "{schema}".jobs')
        rows = cursor.fetchall()
    connection.close()
    assert len(rows) == 1 and rows[0][0] == "queued" and rows[0][2] == "a,b,c"
    assert redis_client.get(f"{settings.redis_prefix}iq:m-1") == body

    with kombu.Connection(settings.broker_url) as broker:  # confirmed: already queued
        message = broker.default_channel.basic_get(settings.queue, no_ack=True)
    assert message is not None
    task = json.loads(message.body)
    assert task["job_id"] == "m-1" and task["sha256"] == rows[0][1]


def test_refuses_what_is_not_a_capture(minimal) -> None:
    module, _, libpq_url, schema = minimal
    client = module.app.test_client()
    query = "/predict?sample_rate_hz=12000&frequency_mhz=145.5&receivers=a,b,c"
    assert client.post(query, data=b"not an array").status_code == 400
    assert client.post(query, data=npy(np.zeros((2, 64), np.complex64))).status_code == 400
    assert client.post("/predict", data=npy(np.zeros((3, 64), np.complex64))).status_code == 400
    nan = np.zeros((3, 64), np.complex64)
    nan[1, 5] = np.nan
    assert client.post(query, data=npy(nan)).status_code == 400
    connection = psycopg2.connect(libpq_url)
    with connection, connection.cursor() as cursor:
        cursor.execute(f'SELECT count(*) FROM "{schema}".jobs')
        assert cursor.fetchone() == (0,)
    connection.close()


@pytest.mark.parametrize("server", MINIMAL_SERVERS)
def test_each_server_the_benchmark_weighs_serves_a_submission(
    minimal, server: str, tmp_path: Path
) -> None:
    """``--minimal-servers``: the handler served as the benchmark serves it accepts a capture
    over HTTP (the server hands it the whole body) and records it."""
    module, settings, libpq_url, schema = minimal
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    iq = (np.random.default_rng(2).standard_normal((3, 12_000)) * (1 + 1j)).astype(np.complex64)
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/predict?sample_rate_hz=12000&frequency_mhz=145.5"
        f"&receivers=a,b,c&job_id=s-{server}",
        data=npy(iq),
        headers={"Content-Type": "application/x-npy"},
        method="POST",
    )
    command = server_command(server, 1, 2, port)
    with managed_process(command, tmp_path / "server.log", env) as process:
        wait_until(server, lambda: shim_answers(f"http://127.0.0.1:{port}"), 60, process, 0.2)
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert answer.status == 202
            assert json.loads(answer.read()) == {"job_id": f"s-{server}", "status": "queued"}
    connection = psycopg2.connect(libpq_url)
    with connection, connection.cursor() as cursor:
        cursor.execute(f'SELECT job_id, status FROM "{schema}".jobs')
        assert cursor.fetchall() == [(f"s-{server}", "queued")]
    connection.close()
