"""Helpers of the integration tests: one way to submit (a capture, a TDoA set), to wait for a
final job, to produce, to hold a job's row, the environment of a worker process, and a Redis
server of a test's own (a shim process's: :mod:`tests.integration.shim_processes`)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import amqp.exceptions
import kombu
import pytest
import redis
import sqlalchemy as sa
from urllib3 import encode_multipart_formdata

from inference_worker.cli.processes import settings_env, wait_until
from inference_worker.serving.store_checks import Finding
from inference_worker.settings import Settings
from inference_worker.storage.database import JobStore
from inference_worker.storage.engine import create_engine, migrate
from inference_worker.storage.redis_store import RedisStore
from tasks.app import dead_letter_queue_name
from tasks.contract import wait_until_final
from tests.helpers import capture_query, npy_bytes
from tools.silent_relay import SilentProxy

FINAL_WAIT_S = 60.0
"""How long a job may take before a test calls it stuck (a hang, not a speed goal)."""


def submit_npy(client, capture, headers: dict[str, str] | None = None, **query: object):
    """POST ``capture`` to the Flask test client as ``application/x-npy``."""
    return client.post(
        "/predict",
        data=npy_bytes(capture.iq),
        content_type="application/x-npy",
        query_string=capture_query(capture, **query),
        headers=headers or {},
    )


def tdoa_form(
    recordings: Any, files: Any = None, names: Any = None, **fields: Any
) -> list[tuple[str, str | tuple[str, bytes, str]]]:
    """A TDoA set's (:class:`~inference_worker.science.kiwi_sets.SyntheticSet`) form: its
    positions, frequency and ``fields``, then a ``capture`` part per file (its own files and
    names unless others are given)."""
    files = recordings.files if files is None else files
    names = recordings.names if names is None else names
    form = {
        "receivers": json.dumps(recordings.positions()),
        "frequency_mhz": str(recordings.frequency_hz / 1e6),
        **fields,
    }
    parts: list[tuple[str, str | tuple[str, bytes, str]]] = list(form.items())
    return parts + [("capture", (n, f, "audio/wav")) for f, n in zip(files, names, strict=True)]


def post_tdoa(
    client: Any, recordings: Any, files: Any = None, names: Any = None, **fields: Any
) -> Any:
    """POST a TDoA set through the test client as multipart (:func:`tdoa_form`)."""
    body, content_type = encode_multipart_formdata(tdoa_form(recordings, files, names, **fields))
    return client.post("/predict", data=body, content_type=content_type)


def wait_final(
    client, job_id: str, headers: dict[str, str] | None = None, timeout_s: float = FINAL_WAIT_S
) -> dict[str, Any]:
    """Poll ``GET /jobs/<id>`` until the job is final; a 404 counts as not yet recorded (a
    producer's job exists once a worker takes it)."""

    def fetch() -> dict[str, Any] | None:
        # a long-poll: the shim answers when the job is final (or after 5 s)
        response = client.get(f"/jobs/{job_id}?wait=5", headers=headers or {})
        if response.status_code == 404:
            return None
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    return wait_until_final(fetch, job_id, timeout_s, interval_s=0.02)


def wait_final_row(jobs: JobStore, job_id: str, timeout_s: float = FINAL_WAIT_S) -> dict[str, Any]:
    """Wait until the job's PostgreSQL row is final; returns the row."""
    return wait_until_final(lambda: jobs.get(job_id), job_id, timeout_s, interval_s=0.05)


def job_row(jobs: JobStore, job_id: str) -> dict[str, Any]:
    """The job's PostgreSQL row, which the test expects to exist."""
    row = jobs.get(job_id)
    assert row is not None, f"no row for job {job_id}"
    return row


def refusing_settings(settings: Settings) -> Settings:
    """``settings`` whose stores each answer with a refusal: a wrong RabbitMQ password, a Redis
    user that does not exist, a database PostgreSQL does not have."""

    def elsewhere(url: str, user: str | None = None, path: str | None = None) -> str:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
        netloc = f"{user}@{parts.hostname}{port}" if user else parts.netloc
        return parts._replace(netloc=netloc, path=parts.path if path is None else path).geturl()

    return settings.model_copy(
        update={
            "broker_url": elsewhere(settings.broker_url, user="guest:not-its-password"),
            "redis_url": elsewhere(settings.redis_url, user="heimdall-nobody:pw"),
            "database_url": elsewhere(settings.database_url, path="/heimdall_no_such_db"),
        }
    )


def delete_queues(broker_url: str, *queues: str) -> None:
    """Delete each of the service's queues a test declared: the queue, its dead-letter queue and
    its exchange."""
    with kombu.Connection(broker_url) as connection:
        channel = connection.default_channel
        for queue in queues:
            channel.queue_delete(queue)
            channel.queue_delete(dead_letter_queue_name(queue))
            channel.exchange_delete(queue)


def queue_consumers(broker_url: str, queue: str) -> int:
    """How many consumers RabbitMQ has on ``queue`` (0 while it is not declared)."""
    return _queue_counts(broker_url, queue)[1]


def queue_messages(broker_url: str, queue: str) -> int:
    """How many messages wait in ``queue`` (0 while it is not declared)."""
    return _queue_counts(broker_url, queue)[0]


def _queue_counts(broker_url: str, queue: str) -> tuple[int, int]:
    with kombu.Connection(broker_url, connect_timeout=5) as connection:
        channel = connection.channel()
        try:
            declared = channel.queue_declare(queue, passive=True)
            return int(declared.message_count), int(declared.consumer_count)
        except amqp.exceptions.NotFound:
            return 0, 0
        finally:
            if channel.is_open:
                channel.close()


def close_at_broker(local_port: int) -> None:
    """Have RabbitMQ close the connection whose client end is ``local_port`` (as an operator's
    ``rabbitmqctl close_connection`` would): only that connection is touched."""
    if shutil.which("rabbitmqctl") is None:  # a laptop without it skips; CI must have it
        (pytest.fail if os.environ.get("CI") else pytest.skip)("rabbitmqctl is not installed")
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "peer_port"],
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    ).stdout
    ours = [
        line.split()[0] for line in listing.splitlines() if line.split()[1:] == [str(local_port)]
    ]
    assert len(ours) == 1, listing
    subprocess.run(
        ["rabbitmqctl", "-q", "close_connection", ours[0], "closed by a test"],
        check=True,
        timeout=60,
        capture_output=True,
    )


def broker_through(settings: Settings, relay: SilentProxy) -> str:
    """The broker URL of ``settings`` reaching RabbitMQ through ``relay`` (``broker_relay``)."""
    broker = kombu.Connection(settings.broker_url)
    credentials = f"{broker.userid}:{broker.password}"
    return f"amqp://{credentials}@127.0.0.1:{relay.port}/{broker.virtual_host}"


def redis_through(settings: Settings, relay: SilentProxy) -> str:
    """The Redis URL of ``settings`` reaching it through ``relay`` (``redis_relay``)."""
    parts = urlsplit(settings.redis_url)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@127.0.0.1:{relay.port}" if credentials else f"127.0.0.1:{relay.port}"
    return parts._replace(netloc=netloc).geturl()


@contextmanager
def migrated_schema(database_url: str, schema: str, **engine_options: Any) -> Iterator[sa.Engine]:
    """An engine on ``schema``, migrated to the newest revision; the schema is dropped after."""
    engine = create_engine(database_url, schema, **engine_options)
    migrate(engine, schema)
    try:
        yield engine
    finally:
        engine.dispose()
        cleanup = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
        with cleanup.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        cleanup.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def worker_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a ``heimdall-inference`` process the settings of ``settings``."""
    return settings_env(settings)


def forget_workers(store: RedisStore) -> None:
    """Drop heartbeats a killed worker left behind (they expire after a few seconds anyway)."""
    for worker in store.workers():
        store.forget_worker(worker["worker_id"])


def hold_row(connection: sa.Connection, job_id: str) -> int:
    """Lock a job's row in ``connection``'s transaction (every worker taking the job waits on it
    until the transaction ends); returns this backend's pid, for :func:`blocked_on`."""
    connection.execution_options(isolation_level="READ COMMITTED")  # a transaction to hold it in
    connection.execute(sa.text("SELECT 1 FROM jobs WHERE job_id = :id FOR UPDATE"), {"id": job_id})
    return int(connection.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())


def blocked_on(engine: sa.Engine, holder: int) -> list[tuple[int, str, str]]:
    """Backends waiting, directly or behind another waiter, for a lock that backend ``holder``
    holds: (pid, application_name, query).

    Asked in a transaction of its own: PostgreSQL freezes what pg_stat_activity shows for the
    length of a transaction.
    """
    with engine.connect() as connection:
        return [
            (pid, name, query)
            for pid, name, query in connection.execute(
                sa.text(
                    "WITH RECURSIVE waiting(pid) AS ("
                    " SELECT pid FROM pg_stat_activity WHERE :holder = ANY(pg_blocking_pids(pid))"
                    " UNION SELECT a.pid FROM pg_stat_activity a JOIN waiting w"
                    " ON w.pid = ANY(pg_blocking_pids(a.pid)))"
                    " SELECT a.pid, a.application_name, a.query"
                    " FROM pg_stat_activity a JOIN waiting USING (pid)"
                ),
                {"holder": holder},
            ).all()
        ]


def produce(settings: Settings, capture, **extra: object) -> str:
    """Enqueue ``capture`` straight onto the queue of ``settings`` with the producer client."""
    from tasks.producer import CaptureProducer

    with CaptureProducer(settings=settings) as producer:
        return producer.submit(
            capture.iq,
            sample_rate_hz=capture.sample_rate_hz,
            frequency_mhz=capture.frequency_mhz,
            receivers=capture.receivers,
            **extra,  # type: ignore[arg-type]
        )


@contextmanager
def private_redis(folder: Path, *options: str, unix_socket: bool = False) -> Iterator[str]:
    """A Redis server of this test's own (no snapshots), with ``options``; its URL (with
    ``unix_socket``, of the Unix socket it listens on instead of a port)."""
    server = shutil.which("redis-server")
    if server is None:  # a laptop without it skips; CI must have it
        (pytest.fail if os.environ.get("CI") else pytest.skip)("redis-server is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    # a short folder of its own: a socket's path holds at most ~107 bytes, a test's may not
    sock = Path(tempfile.mkdtemp(prefix="heimdall-redis-")) / "redis.sock"
    port = 0 if unix_socket else free_port()
    command = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    if unix_socket:
        command += ["--unixsocket", str(sock), "--unixsocketperm", "700"]
    command += ["--appendonly", "no", "--dir", str(folder), *options]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    client = redis.Redis(unix_socket_path=str(sock)) if unix_socket else redis.Redis(port=port)
    where = f"its socket {sock}" if unix_socket else f"port {port}"

    def answers() -> bool:
        try:
            return bool(client.ping())
        except redis.exceptions.ConnectionError:
            return False
        except redis.exceptions.ResponseError:  # up, and refusing (a replica without a primary)
            return True

    try:
        wait_until(f"a Redis on {where}", answers, 30, process)
        yield f"unix://{sock}?db=0" if unix_socket else f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(sock.parent, ignore_errors=True)


def in_area(findings: list[Finding], area: str) -> list[tuple[str, str]]:
    """The (level, message) of ``heimdall-inference check``'s findings in ``area``."""
    return [(f.level, f.message) for f in findings if f.area == area]


def run_check(local: Settings, *options: str) -> list[Finding]:
    """``heimdall-inference check --json`` in a process of its own; its findings (its exit code
    and ``ok`` agree)."""
    command = [sys.executable, "-m", "inference_worker.cli", "check", "--json", *options]
    done = subprocess.run(
        command, env=worker_env(local), capture_output=True, text=True, timeout=60
    )
    body = json.loads(done.stdout)
    assert done.returncode == (0 if body["ok"] else 1), done.stderr
    return [Finding(**finding) for finding in body["findings"]]
