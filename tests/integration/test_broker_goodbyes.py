"""Connections to RabbitMQ end with the closing handshake it expects: one dropped without it is
logged there as a warning ("client unexpectedly closed TCP connection"), which the shim's health
checks (each publishes on a connection of its own) and every stop of a process that had
published used to leave, hundreds a day under a load balancer's checks. Read from RabbitMQ's own
log (``rabbitmq-diagnostics log_tail``): the connections it accepted while the test ran, and
which of them it saw dropped."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import urllib.request

import pytest

from inference_worker.cli.processes import cli_process, wait_until
from tests.integration.helpers import free_port, shim_answers, worker_env
from tests.integration.service_control import cannot_run

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


def test_health_checks_submissions_and_a_stop_leave_no_dropped_connection(
    own_queue, capture, broker_log, tmp_path
):
    from api_shim.client import ShimClient
    from tasks.producer import CaptureProducer

    local, _, _ = own_queue  # no worker consumes: the jobs stay queued
    port = free_port()
    env = {**worker_env(local), "HEIMDALL_API_PORT": str(port), "XDG_RUNTIME_DIR": str(tmp_path)}
    url = f"http://127.0.0.1:{port}"
    fields = {
        "sample_rate_hz": capture.sample_rate_hz,
        "frequency_mhz": capture.frequency_mhz,
        "receivers": list(capture.receivers),
    }
    before = broker_log()
    with cli_process(["api", "--workers", "2"], tmp_path / "api.log", env) as api:
        wait_until("the shim", lambda: shim_answers(url), 60, api)
        for _ in range(3):
            with urllib.request.urlopen(f"{url}/health", timeout=10) as reply:
                assert reply.status == 200
        client = ShimClient(url, timeout_s=30)
        for _ in range(6):  # both processes publish (each has a connection of its own)
            client.submit_npy(capture.iq, **fields)
    with CaptureProducer(settings=local) as producer:  # the producer client's, closed as it ends
        producer.submit(capture.iq, **fields)
    deadline = time.monotonic() + 20.0  # RabbitMQ logs a close as it sees it
    while True:
        accepted, closed, dropped = _new_connections(before, broker_log())
        if accepted == closed or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    # three health checks, the shim's publishing connections, the producer client's
    assert len(accepted) >= 5
    assert not accepted - closed, f"{len(accepted - closed)} of {len(accepted)} left open"
    assert not dropped, f"{len(dropped)} of {len(accepted)} dropped without the handshake"


def test_while_the_broker_blocks_publishing_its_connections_are_dropped(settings, broker_log):
    """A blocked broker reads nothing, a closing handshake included: the connections are
    dropped rather than each waiting for an answer that does not come."""
    from tasks.app import broker_alarm, close_app, create_celery

    app = create_celery(settings.broker_url, settings.queue)
    connection = app.pool.acquire(block=True)
    connection.ensure_connection(max_retries=1)
    connection.release()  # back into the pool, connected
    port = connection.connection.transport.sock.getsockname()[1]
    broker_alarm(app).reason = "memory"  # as a blocked connection would have told it
    close_app(app, timeout_s=30.0)
    assert not connection.connected

    def dropped() -> bool:
        log = broker_log()
        ours = re.search(rf"accepting AMQP connection (<[\d.]+>) \(\S+:{port} ", log)
        return ours is not None and ours.group(1) in DROPPED.findall(log)

    wait_until("RabbitMQ to log the connection dropped", dropped, 20)
