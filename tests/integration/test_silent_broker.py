"""A RabbitMQ that stops answering without closing its connections (paused, a stalled host) costs
a submission one timeout, the next submissions none for a while, and a health check one
connection attempt.

The broker is the real one, reached through a relay that goes silent
(:class:`~tools.silent_relay.SilentProxy`). Before: a publish that timed out was
retried by kombu, each reconnection waiting out the connect timeout for a handshake that never
came (27 s before a submission's ``503``), and the health check's probe connected twice.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from api_shim.app import create_app
from inference_worker.cli.processes import wait_until
from inference_worker.core.capture import iq_digest
from inference_worker.storage.database import JobStore
from tasks.intake import ServiceUnavailable
from tasks.producer import CaptureProducer
from tests.integration.helpers import broker_through, job_row, submit_npy, wait_final_row
from tools.silent_relay import SilentProxy


@pytest.fixture
def proxy(broker_relay: SilentProxy) -> SilentProxy:
    return broker_relay


@pytest.fixture
def shim_through(own_queue_factory, proxy, settings):
    url = broker_through(settings, proxy)
    local, _, start_worker = own_queue_factory(broker_url=url, publish_confirm_timeout_s=1.0)
    app = create_app(local)
    yield app, start_worker
    app.extensions["heimdall"].jobs.engine.dispose()


def other(capture, k: int):
    return replace(capture, iq=capture.iq * np.complex64(1.0 + k * 1e-4))


@pytest.mark.timeout(120, method="thread")
def test_a_silent_broker_costs_a_submission_one_timeout_and_the_next_none(
    shim_through, proxy, engine, capture
):
    """The submission whose confirm timed out is kept and runs: its task was sent, and the
    broker reads it once it answers again (or, dropped with its connection, the relay
    publishes it again from the row). It was withdrawn before, and the task arriving late
    then failed the job ("capture data is missing"): 4 accepted jobs of 31 344 failed so when
    RabbitMQ went silent for 8 s under 4 clients."""
    app, start_worker = shim_through
    client = app.test_client()
    jobs, store = JobStore(engine), app.extensions["heimdall"].store
    assert submit_npy(client, capture).status_code == 202  # a connection in the pool
    with proxy.silent():
        before = proxy.connections
        kept = submit_npy(client, other(capture, 1), job_id="silent-broker-1")
        tried = proxy.connections - before  # kombu's reconnections after the confirm timed out
        refused = submit_npy(client, other(capture, 2), job_id="silent-broker-2")
        assert proxy.connections - before == tried  # not asked at all
    assert tried <= 1
    assert kept.status_code == 202 and kept.get_json()["created"] is True, kept.get_json()
    assert job_row(jobs, "silent-broker-1")["published_at"] is None  # the relay's, if need be
    assert store.has_blob(store.blob_key("silent-broker-1", iq_digest(other(capture, 1).iq)))
    assert refused.status_code == 503, refused.get_json()
    assert refused.get_json()["error"]["message"] == (
        "the message broker is unavailable; retry later"
    )
    assert jobs.get("silent-broker-2") is None  # refused before anything was sent: not kept
    assert not store.has_blob(store.blob_key("silent-broker-2", iq_digest(other(capture, 2).iq)))
    # the broker answers again: accepted once the window after its silence has passed (5 s)
    wait_until(
        "a submission accepted",
        lambda: submit_npy(client, other(capture, 3)).status_code == 202,
        20,
    )
    with start_worker("after-the-silence"):  # its task, if it reached the broker, or the relay's
        done = wait_final_row(jobs, "silent-broker-1", 60)
    assert done["status"] == "succeeded", done["error"]


@pytest.mark.timeout(60, method="thread")
def test_a_health_check_tries_a_silent_broker_once(shim_through, proxy):
    app, _ = shim_through
    client = app.test_client()
    with proxy.silent():
        before = proxy.connections
        health = client.get("/health")
        attempts = proxy.connections - before
    assert health.status_code == 503
    broker = health.get_json()["checks"]["broker"]
    assert broker == {"ok": False, "error": "TimeoutError: RabbitMQ did not answer within 2 s"}
    assert attempts == 1  # kombu's own connect tried twice, 2 s apart


@pytest.mark.timeout(120, method="thread")
def test_a_producer_leaves_the_capture_of_a_task_that_may_arrive(
    own_queue_factory, proxy, settings, engine, capture
):
    """The producer client writes no row, so it cannot relay a task whose confirm timed out:
    it raises, and keeps the capture for the task that may still arrive (the relay here may
    pass the publish on, or drop it with its connection); resubmitted under the same id, as
    the client is told, the job runs once, either way."""
    url = broker_through(settings, proxy)
    local, store, start_worker = own_queue_factory(broker_url=url, publish_confirm_timeout_s=1.0)
    producer = CaptureProducer(settings=local)
    fields = {"sample_rate_hz": capture.sample_rate_hz, "frequency_mhz": capture.frequency_mhz}
    producer.submit(capture.iq, receivers=capture.receivers, **fields)  # a connection in the pool
    sent = other(capture, 4)
    with proxy.silent(), pytest.raises(ServiceUnavailable, match="broker is unavailable"):
        producer.submit(sent.iq, receivers=sent.receivers, job_id="silent-producer", **fields)
    assert store.has_blob(store.blob_key("silent-producer", iq_digest(sent.iq)))

    def resubmitted() -> bool:  # refused at once while the window after the silence lasts
        try:
            producer.submit(sent.iq, receivers=sent.receivers, job_id="silent-producer", **fields)
        except ServiceUnavailable:
            return False
        return True

    wait_until("the resubmission accepted", resubmitted, 20)
    with start_worker("after-the-silence"):
        done = wait_final_row(JobStore(engine), "silent-producer", 60)
    assert done["status"] == "succeeded", done["error"]
    producer.close()
