"""The connection a shim process keeps for asking RabbitMQ how it is (health checks, queue
depths): one connection for every question, replaced unseen when the broker has closed it."""

from __future__ import annotations

import gc
import socket
import threading
import time
import uuid
from unittest import mock

import amqp
import kombu
import pytest

from tasks.probe import BrokerProbe
from tests.integration.helpers import broker_through, close_at_broker, delete_queues


@pytest.fixture
def probe(settings):
    probe = BrokerProbe(settings.broker_url)
    yield probe
    probe.close()


@pytest.fixture
def queue_of_three(settings):
    """A queue holding three messages and no consumer."""
    name = f"{settings.queue}.depth{uuid.uuid4().hex[:6]}"
    with kombu.Connection(settings.broker_url) as connection:
        queue = kombu.Queue(name, routing_key=name, durable=False)
        producer = connection.Producer()
        for n in range(3):
            producer.publish({"n": n}, routing_key=name, declare=[queue])
    yield name
    delete_queues(settings.broker_url, name)


def kept_port(probe: BrokerProbe) -> int:
    sock: socket.socket = probe._line.connection.connection.sock  # type: ignore[union-attr]
    return sock.getsockname()[1]


def test_health_questions_and_queue_depths_share_one_connection(probe, queue_of_three):
    missing = f"{queue_of_three}.never-declared"
    assert probe.blocked_reason() is None
    port = kept_port(probe)
    for _ in range(4):
        assert probe.blocked_reason() is None
        depths = probe.queue_depths([queue_of_three, missing, queue_of_three])
        assert depths == {queue_of_three: (3, 0)}  # a queue not declared is left out
    assert probe.connections_opened == 1
    assert kept_port(probe) == port


def test_a_connection_the_broker_closed_is_replaced_without_a_failed_question(
    probe, queue_of_three
):
    """A broker restart, or an operator closing connections, is not a failed health check."""
    assert probe.blocked_reason() is None
    close_at_broker(kept_port(probe))
    assert probe.blocked_reason() is None
    assert probe.connections_opened == 2
    close_at_broker(kept_port(probe))
    assert probe.queue_depths([queue_of_three]) == {queue_of_three: (3, 0)}
    assert probe.connections_opened == 3


def test_a_socket_gone_under_the_probe_is_replaced(probe):
    assert probe.blocked_reason() is None
    probe._line.connection.connection.sock.shutdown(socket.SHUT_RDWR)
    assert probe.blocked_reason() is None
    assert probe.connections_opened == 2


def test_a_broker_that_refuses_fails_each_question_and_the_next_tries_again(refusing_port):
    probe = BrokerProbe(f"amqp://guest:guest@127.0.0.1:{refusing_port}//", timeout=0.5)
    for _ in range(2):
        with pytest.raises(OSError):
            probe.blocked_reason()
    assert probe.connections_opened == 2
    probe.close()


def test_a_probe_dropped_unclosed_lets_its_connection_go(settings):
    """An app made and dropped (as tests do) leaves no socket open behind it."""
    probe = BrokerProbe(settings.broker_url)
    assert probe.blocked_reason() is None
    sock = probe._line.connection.connection.sock  # type: ignore[union-attr]
    del probe
    gc.collect()
    assert sock.fileno() == -1


def test_a_broker_that_accepts_and_never_answers_fails_the_question_saying_so():
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # connections are accepted by the kernel; nothing is ever said
        probe = BrokerProbe(f"amqp://guest:guest@127.0.0.1:{silent.getsockname()[1]}//", 0.5)
        with pytest.raises(TimeoutError, match="did not answer within 0.5 s"):
            probe.blocked_reason()
        probe.close()


def test_a_scrape_waits_for_all_its_answers_within_one_timeout(
    settings, queue_of_three, broker_relay
):
    """A broker slow to answer the first of a scrape's declares and then silent costs the
    scrape the probe's timeout, not the timeout again for each queue it asks about (a scrape
    asked about two queues waited up to twice 2 s)."""
    relay = broker_relay
    probe = BrokerProbe(broker_through(settings, relay), timeout=2.0)
    asked = 0
    declare = amqp.Channel.queue_declare

    def slow_then_silent(channel, *args, **kwargs):
        nonlocal asked
        asked += 1
        relay.speaking.clear()  # the first answered after 1.5 s, the second never
        if asked == 1:
            threading.Timer(1.5, relay.speaking.set).start()
        return declare(channel, *args, **kwargs)

    try:
        assert probe.queue_depths([queue_of_three]) == {queue_of_three: (3, 0)}
        with mock.patch.object(amqp.Channel, "queue_declare", slow_then_silent):
            began = time.monotonic()
            with pytest.raises(TimeoutError, match="did not answer within 2 s"):
                probe.queue_depths([queue_of_three, queue_of_three])
            took = time.monotonic() - began
        assert asked == 2
        assert took < 2.8, f"the scrape took {took:.1f} s"  # 3.5 s before
    finally:
        probe.close()
