"""Connections to RabbitMQ end with the closing handshake it expects: one dropped without it is
logged there as a warning ("client unexpectedly closed TCP connection"), which the shim's health
checks (each publishes on a connection of its own) and every stop of a process that had
published used to leave, hundreds a day under a load balancer's checks. Read from RabbitMQ's own
log (``rabbitmq-diagnostics log_tail``): the connections it accepted while the test ran, and
which of them it saw dropped. The health checks and metrics scrapes now share one connection in
each shim process."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from inference_worker.cli.processes import cli_process, wait_until
from tests.helpers import capture_fields
from tests.integration.helpers import wait_final_row, worker_env
from tests.integration.service_control import cannot_run
from tests.integration.shim_processes import shim_answers, shim_on_free_port

REPO = Path(__file__).resolve().parents[2]

ACCEPTED = re.compile(r"accepting AMQP connection (<[\d.]+>)")
CLOSED = re.compile(r"closing AMQP connection (<[\d.]+>)")  # with the handshake or without
DROPPED = re.compile(r"(<[\d.]+>) client unexpectedly closed TCP connection")


@pytest.fixture
def broker_log():
    """A function that reads the last lines of this machine's RabbitMQ log."""
    if shutil.which("rabbitmq-diagnostics") is None or os.geteuid() != 0:
        cannot_run(
            "the broker log test", "reading RabbitMQ's log needs rabbitmq-diagnostics and root"
        )

    def tail() -> str:
        command = ["rabbitmq-diagnostics", "-q", "log_tail", "-N", "5000"]
        return subprocess.run(
            command, capture_output=True, text=True, check=True, timeout=60
        ).stdout

    return tail


def _new_connections(before: str, after: str) -> tuple[set[str], set[str], set[str]]:
    """The connections RabbitMQ accepted between the two reads of its log, those of them it
    has seen closed, and those it logged as dropped without the closing handshake."""
    accepted = set(ACCEPTED.findall(after)) - set(ACCEPTED.findall(before))
    return accepted, accepted & set(CLOSED.findall(after)), accepted & set(DROPPED.findall(after))


def _settled(before: str, broker_log) -> tuple[set[str], set[str], set[str]]:
    """:func:`_new_connections` once RabbitMQ has logged each one's close (it logs a close as it
    sees it), or as they stand after 20 s."""
    deadline = time.monotonic() + 20.0
    while True:
        accepted, closed, dropped = _new_connections(before, broker_log())
        if accepted == closed or time.monotonic() > deadline:
            return accepted, closed, dropped
        time.sleep(0.5)


def test_health_checks_submissions_and_a_stop_leave_no_dropped_connection(
    own_queue, capture, broker_log, tmp_path
):
    from api_shim.client import ShimClient
    from tasks.producer import CaptureProducer

    local, _, _ = own_queue  # no worker consumes: the jobs stay queued
    _, env, url = shim_on_free_port(local, tmp_path)
    fields = capture_fields(capture)
    before = broker_log()
    with cli_process(["api", "--workers", "2"], tmp_path / "api.log", env) as api:
        wait_until("the shim", lambda: shim_answers(url), 60, api)
        started = broker_log()
        for path in ("/health", "/metrics") * 3:
            with urllib.request.urlopen(f"{url}{path}", timeout=10) as reply:
                assert reply.status == 200
        # the connection each shim process keeps for its questions (one for each, once)
        assert len(_new_connections(started, broker_log())[0]) <= 2
        client = ShimClient(url, timeout_s=30)
        for _ in range(6):  # both processes publish (each has a connection of its own)
            client.submit_npy(capture.iq, **fields)
    with CaptureProducer(settings=local) as producer:  # the producer client's, closed as it ends
        producer.submit(capture.iq, **fields)
    accepted, closed, dropped = _settled(before, broker_log)
    # the shim's probing and publishing connections, the producer client's
    assert len(accepted) >= 4
    assert not accepted - closed, f"{len(accepted - closed)} of {len(accepted)} left open"
    assert not dropped, f"{len(dropped)} of {len(accepted)} dropped without the handshake"


def test_while_the_broker_blocks_publishing_its_connections_are_dropped(settings, broker_log):
    """A blocked broker reads nothing, a closing handshake included: the connections are
    dropped rather than each waiting for an answer that does not come."""
    from tasks.app import broker_alarm, create_celery

    app = create_celery(settings.broker_url, settings.queue)
    connection = app.pool.acquire(block=True)
    connection.ensure_connection(max_retries=1)
    connection.release()  # back into the pool, connected
    port = connection.connection.transport.sock.getsockname()[1]
    broker_alarm(app).reason = "memory"  # as a blocked connection would have told it
    app.close_timeout_s = 30.0  # a handshake waited for would show
    app.close()
    assert not connection.connected

    def dropped() -> bool:
        log = broker_log()
        # The last connection from this port: the log holds earlier ones the port served
        ours = re.findall(rf"accepting AMQP connection (<[\d.]+>) \(\S+:{port} ", log)
        return bool(ours) and ours[-1] in DROPPED.findall(log)

    wait_until("RabbitMQ to log the connection dropped", dropped, 20)


def test_a_worker_whose_relay_published_stops_with_no_dropped_connection(
    own_queue_factory, engine, broker_log
):
    """Celery never closes the connections its app's pool holds: the worker's relay published
    on one, which went with the process."""
    from inference_worker.storage.database import JobStore
    from tests.integration.crashing_submit import KILLED

    local, store, start_worker = own_queue_factory(outbox_grace_s=1.0, relay_interval_s=0.5)
    job_id = f"goodbye-{uuid.uuid4().hex[:12]}"
    before = broker_log()
    with start_worker("relay") as worker:
        wait_until("the worker", lambda: bool(store.workers()), 60, worker)
        # a shim killed after storing the capture, before publishing: the relay publishes it
        planted = subprocess.run(
            [sys.executable, "-m", "tests.integration.crashing_submit", "shim", "after_capture"]
            + [job_id, str(uuid.uuid4().int % 10**6)],  # a capture no cache answers
            env=worker_env(local),
            cwd=REPO,
            timeout=120,
            capture_output=True,
            text=True,
        )
        assert planted.returncode == KILLED, planted.stderr[-2000:]
        assert wait_final_row(JobStore(engine), job_id)["status"] == "succeeded"
    accepted, closed, dropped = _settled(before, broker_log)
    assert accepted and not accepted - closed, f"{len(accepted - closed)} left open"
    assert not dropped, f"{len(dropped)} of {len(accepted)} dropped without the handshake"
