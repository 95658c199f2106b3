"""A RabbitMQ memory or disk alarm: every submission is answered, none is held for the alarm.

In an alarm RabbitMQ stops reading from each connection that publishes, and the confirm a
publisher waits for comes only when the alarm clears. The shim hears that its connection is
blocked and answers at once: a job whose task RabbitMQ had already read is accepted (it runs
once the alarm clears), every later one is refused with a 503 that says why and keeps nothing.
Meanwhile ``/health`` says why. Afterwards every accepted job finishes, and a refused job id
submitted again is accepted.

The alarm tests set the machine's RabbitMQ memory watermark so low that the alarm goes off,
which blocks every publisher on the machine for a few seconds, so they run only when asked for,
as the fault-injection suite does: ``HEIMDALL_FAULT_TESTS=1`` (``.ci/run`` sets it). The last
test, of a connection the broker closed, closes only a connection of its own.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import replace

import numpy as np
import pytest

from api_shim.client import ShimClient, ShimError, ShimUnreachable
from inference_worker.cli.processes import cli_process, stop, wait_until
from inference_worker.serving.store_checks import check_broker
from inference_worker.storage.database import JobStore
from tasks.app import create_celery, publisher
from tasks.contract import read_message
from tests.helpers import task_message
from tests.integration.helpers import (
    close_at_broker,
    delete_queues,
    free_port,
    job_row,
    produce,
    queue_messages,
    worker_env,
)
from tests.integration.service_control import cannot_run, require_opt_in, restore_services

CLIENT_TIMEOUT_S = 30.0
"""A submission unanswered this long counts as held (status 0), which fails the test."""
DURING = 8
"""Submissions made while the alarm lasts."""


ALARM_WATERMARK = "0.000001"
"""The watermark that sets the alarm off. ``tools/local_services.sh`` knows it and sets the
configured one back, here and after a run killed while it was set (every publisher on the
machine would stay blocked)."""


def rabbit_eval(expression: str) -> str:
    return subprocess.run(
        ["rabbitmqctl", "eval", expression], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()


def memory_alarm() -> bool:
    return "memory" in rabbit_eval("rabbit_alarm:get_alarms().")


def set_watermark(on: bool) -> None:
    command = ["rabbitmqctl", "-q", "set_vm_memory_high_watermark", ALARM_WATERMARK]
    if on:
        subprocess.run(command, check=True, timeout=180, capture_output=True)
    else:
        restore_services()


@pytest.fixture
def memory_alarm_switch():
    """A function that sets off a memory alarm on this machine's RabbitMQ; the watermark is
    set back afterwards, whatever happens."""
    require_opt_in("sets off a memory alarm on this machine's RabbitMQ")
    if shutil.which("rabbitmqctl") is None or os.geteuid() != 0:
        why = "setting RabbitMQ's memory watermark needs rabbitmqctl and root"
        cannot_run("the broker alarm test", why)
    switched = []

    def switch(on: bool) -> None:
        set_watermark(on)
        switched.append(on)
        wait_until(f"the memory alarm {'on' if on else 'off'}", lambda: memory_alarm() == on, 30)

    try:
        yield switch
    finally:
        if switched:
            set_watermark(False)


def post(shim: ShimClient, capture, job_id: str) -> tuple[int, dict, float]:
    """Submit ``capture``: the status (0: held until the client gave up), the body, seconds."""
    started = time.monotonic()
    try:
        accepted = shim.submit_npy(
            capture.iq,
            sample_rate_hz=capture.sample_rate_hz,
            frequency_mhz=capture.frequency_mhz,
            receivers=list(capture.receivers),
            job_id=job_id,
        )
        status, body = 202, accepted
    except ShimError as exc:
        status, body = exc.status, exc.body
    except ShimUnreachable as exc:  # no answer in time: held
        status, body = 0, {"error": {"message": str(exc)}}
    return status, body, time.monotonic() - started


def test_an_alarm_is_answered_at_once_and_loses_nothing(
    memory_alarm_switch, own_queue, engine, simulator, tmp_path
):
    local, _, start_worker = own_queue
    rng = np.random.default_rng(20261202)
    captures = [simulator.simulate(rng, sample_rate_hz=12_000.0, duration_s=1.0) for _ in range(4)]
    port = free_port()
    shim = ShimClient(f"http://127.0.0.1:{port}", timeout_s=CLIENT_TIMEOUT_S)
    env = {**worker_env(local), "HEIMDALL_WORKER_METRICS_PORT": "0"}
    jobs = JobStore(engine)
    tag = uuid.uuid4().hex[:8]

    def final(job_id: str) -> bool:
        return (jobs.get(job_id) or {}).get("status") in ("succeeded", "failed")

    with (
        cli_process(["api", "--port", str(port), "--workers", "1"], tmp_path / "api.log", env),
        start_worker("A"),
    ):
        wait_until("the shim", lambda: post(shim, captures[0], f"alarm-{tag}-0")[0] == 202, 60)
        wait_until("the first job", lambda: final(f"alarm-{tag}-0"), 60)

        memory_alarm_switch(True)
        during = []
        for index in range(DURING):
            job_id = f"alarm-{tag}-during-{index}"
            # A new capture each time (a repeated one is answered from the result cache).
            capture = captures[1 + index % 3]
            capture = replace(capture, iq=capture.iq * np.complex64(1.0 + 1e-6 * (index + 1)))
            during.append((job_id, capture, *post(shim, capture, job_id)))
        status, body = shim.health()
        assert status == 503 and not body["checks"]["broker"]["ok"], body
        assert "blocks publishing" in body["checks"]["broker"]["error"]
        memory_alarm_switch(False)
        # The shim's health checks ask the alarm's probe too: the alarm is heard to be over.
        wait_until("the shim healthy again", lambda: shim.health()[0] == 200, 30)

        for job_id, _, status, body, seconds in during:
            print(f"{job_id}: HTTP {status} in {seconds * 1e3:.0f} ms {body.get('error', '')}")
        statuses = [status for _, _, status, _, _ in during]
        assert set(statuses) <= {202, 503}, statuses  # 0: held until the client gave up
        refused = [
            (job_id, capture, body) for job_id, capture, status, body, _ in during if status == 503
        ]
        assert refused, "no submission was refused during the alarm"
        for job_id, _, body in refused:
            assert body["error"]["code"] == "service_unavailable"
            assert "low on memory or disk" in body["error"]["message"]
            assert jobs.get(job_id) is None  # nothing kept

        accepted = [job_id for job_id, _, status, _, _ in during if status == 202]
        for job_id, capture, _ in refused:  # the same job id, once the alarm is over
            wait_until(
                f"{job_id} accepted again",
                lambda: post(shim, capture, job_id)[0] == 202,  # noqa: B023
                30,
            )
            accepted.append(job_id)
        wait_until("every accepted job final", lambda: all(map(final, accepted)), 120)
        assert {job_row(jobs, job_id)["status"] for job_id in accepted} == {"succeeded"}


def test_workers_drain_the_queue_while_an_alarm_lasts(
    memory_alarm_switch, own_queue, engine, simulator
):
    """Consuming is not blocked in an alarm, and draining the backlog is what ends one: a worker
    (started during the alarm here) takes every waiting job meanwhile, and stops when told to.
    Its event loop sent heartbeats with confirms, and stopped at the first one until the alarm
    was over."""
    local, _, start_worker = own_queue
    rng = np.random.default_rng(20261203)
    capture = simulator.simulate(rng, sample_rate_hz=12_000.0, duration_s=1.0)
    waiting = [
        produce(local, replace(capture, iq=capture.iq * np.complex64(1.0 + 1e-6 * (k + 1))))
        for k in range(20)
    ]
    jobs = JobStore(engine)

    def finished() -> int:
        return sum((jobs.get(job_id) or {}).get("status") == "succeeded" for job_id in waiting)

    memory_alarm_switch(True)
    with start_worker("A") as worker:
        wait_until("the waiting jobs done during the alarm", lambda: finished() == 20, 60)
        # A warm shutdown meanwhile: it closed its events connection with a handshake that
        # RabbitMQ, reading nothing from it, never answered, until SIGKILL 30 s later.
        stop(worker)
        assert worker.returncode != -signal.SIGKILL
        assert memory_alarm()  # still on: nothing here waited for its end
    memory_alarm_switch(False)


def test_health_hears_an_alarm_before_a_submission_meets_it(
    memory_alarm_switch, own_queue, engine, simulator, tmp_path
):
    """``/health`` publishes, so a load balancer learns of an alarm before any submission is
    caught by it; the submission that follows is refused at once and keeps nothing, and is
    accepted once the alarm is over."""
    local, _, _ = own_queue
    rng = np.random.default_rng(20261204)
    capture = simulator.simulate(rng, sample_rate_hz=12_000.0, duration_s=1.0)
    port = free_port()
    shim = ShimClient(f"http://127.0.0.1:{port}", timeout_s=CLIENT_TIMEOUT_S)
    env = {**worker_env(local), "HEIMDALL_WORKER_METRICS_PORT": "0"}
    job_id = f"alarm-health-{uuid.uuid4().hex[:8]}"

    def health() -> int:
        try:
            return shim.health()[0]
        except ShimUnreachable:
            return 0

    with cli_process(["api", "--port", str(port), "--workers", "1"], tmp_path / "api.log", env):
        wait_until("the shim", lambda: health() == 200, 60)
        memory_alarm_switch(True)
        status, body = shim.health()  # nothing submitted since the alarm began
        assert status == 503 and "blocks publishing" in body["checks"]["broker"]["error"], body
        status, body, _ = post(shim, capture, job_id)
        assert status == 503 and body["error"]["code"] == "service_unavailable", body
        assert JobStore(engine).get(job_id) is None  # nothing kept
        memory_alarm_switch(False)
        wait_until("the shim healthy again", lambda: health() == 200, 30)
        assert post(shim, capture, job_id)[0] == 202


def test_the_deployment_check_names_an_alarm(memory_alarm_switch, settings):
    """``heimdall-inference check`` hears the alarm, which only a connection that publishes is
    told of, and is quiet again once it clears."""

    def alarm_findings():
        return [f for f in check_broker(settings) if "blocks publishing" in f.message]

    assert alarm_findings() == []
    memory_alarm_switch(True)
    [finding] = alarm_findings()
    assert finding.level == "fail" and "memory or disk alarm" in finding.message, finding
    assert "refused (503) until it clears" in finding.message
    memory_alarm_switch(False)
    assert alarm_findings() == []


def test_a_publish_on_a_connection_the_broker_closed_reconnects(settings):
    """A pooled connection RabbitMQ has closed (a restart, an operator's ``close_connection``)
    is found gone when a publish first listens to it for an alarm; the publish's own retries
    reconnect, as they did before it listened. Only this test's own connection is closed."""
    queue = f"{settings.queue}.reconnect{uuid.uuid4().hex[:6]}"
    app = create_celery(settings.broker_url, queue)
    publish = publisher(app, queue)
    try:
        publish(read_message(task_message(np.ones((3, 4), np.complex64), "first", "blob:first")))
        with app.producer_or_acquire() as producer:
            close_at_broker(producer.connection.connection.sock.getsockname()[1])
        publish(read_message(task_message(np.ones((3, 4), np.complex64), "second", "blob:2nd")))
        assert queue_messages(settings.broker_url, queue) == 2
    finally:
        delete_queues(settings.broker_url, queue)
        app.close()
