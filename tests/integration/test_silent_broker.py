"""A RabbitMQ that stops answering without closing its connections (paused, a stalled host) costs
a submission one timeout, the next submissions none for a while, and a health check one
connection attempt.

The broker is the real one, reached through a relay that goes silent
(:class:`~tests.integration.silent_proxy.SilentProxy`). Before: a publish that timed out was
retried by kombu, each reconnection waiting out the connect timeout for a handshake that never
came (27 s before a submission's ``503``), and the health check's probe connected twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import kombu
import numpy as np
import pytest

from api_shim.app import create_app
from inference_worker.cli.processes import wait_until
from inference_worker.core.capture import iq_digest
from inference_worker.storage.database import JobStore
from tests.integration.helpers import submit_npy
from tests.integration.silent_proxy import SilentProxy


@pytest.fixture
def proxy(settings) -> Iterator[SilentProxy]:
    broker = kombu.Connection(settings.broker_url)
    relay = SilentProxy(broker.hostname or "127.0.0.1", broker.port or 5672)
    yield relay
    relay.close()


@pytest.fixture
def shim_through(own_queue_factory, proxy, settings):
    broker = kombu.Connection(settings.broker_url)
    url = f"amqp://{broker.userid}:{broker.password}@127.0.0.1:{proxy.port}/{broker.virtual_host}"
    local, _, _ = own_queue_factory(broker_url=url, publish_confirm_timeout_s=1.0)
    app = create_app(local)
    yield app, local
    app.extensions["heimdall"].jobs.engine.dispose()


def other(capture, k: int):
    return replace(capture, iq=capture.iq * np.complex64(1.0 + k * 1e-4))


@pytest.mark.timeout(60, method="thread")
def test_a_silent_broker_costs_a_submission_one_timeout_and_the_next_none(
    shim_through, proxy, engine, capture
):
    app, _ = shim_through
    client = app.test_client()
    assert submit_npy(client, capture).status_code == 202  # a connection in the pool
    with proxy.silent():
        before = proxy.connections
        refused = submit_npy(client, other(capture, 1), job_id="silent-broker-1")
        tried = proxy.connections - before  # kombu's reconnections after the confirm timed out
        at_once = submit_npy(client, other(capture, 2), job_id="silent-broker-2")
        assert proxy.connections - before == tried  # not asked at all
    assert tried <= 1
    for answer in (refused, at_once):
        assert answer.status_code == 503, answer.get_json()
        assert answer.get_json()["error"]["message"] == (
            "the message broker is unavailable; retry later"
        )
    store = app.extensions["heimdall"].store
    for k, job_id in ((1, "silent-broker-1"), (2, "silent-broker-2")):  # nothing kept
        assert JobStore(engine).get(job_id) is None
        assert not store.has_blob(store.blob_key(job_id, iq_digest(other(capture, k).iq)))
    # the broker answers again: accepted once the window after its silence has passed (5 s)
    wait_until(
        "a submission accepted",
        lambda: submit_npy(client, other(capture, 3)).status_code == 202,
        20,
    )


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
