"""The connection a process keeps for asking RabbitMQ how it is.

A shim process's health checks ask whether the broker takes publishes, and its metrics scrapes
how deep the queues are. Each used to open a connection of its own and close it: three lines in
RabbitMQ's log for every check (accepting, authenticated, closing), every few seconds under a
load balancer and a Prometheus, and the connection churn RabbitMQ asks its clients to avoid.
A :class:`BrokerProbe` keeps one connection between questions. One found gone when asked (the
broker restarted, or closed it) is replaced at once and the question asked again there; one
that RabbitMQ blocks is dropped, the next question opening another.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import amqp
import kombu

from tasks.alarm import PROBE_ROUTING_KEY

log = logging.getLogger(__name__)

Answer = TypeVar("Answer")


class _Line:
    """The kept connection, its channels and what the broker said on it. Its callbacks hold
    this and not the probe, so a probe dropped unclosed (an app a test made) is collected and
    its finalizer lets the connection go."""

    def __init__(self) -> None:
        self.connection: kombu.Connection | None = None
        self.confirming: amqp.Channel | None = None  # the probe's publishes, confirmed
        self.asking: amqp.Channel | None = None  # passive declares (a missing queue closes it)
        self.confirmed = 0
        self.blocked: str | None = None

    def heard_blocked(self, reason: str) -> None:
        self.blocked = reason or "blocked"

    def heard_unblocked(self) -> None:
        self.blocked = None

    def heard_confirm(self, *_: object) -> None:
        self.confirmed += 1

    def let_go(self, *, goodbye: bool = False) -> None:
        connection, self.connection = self.connection, None
        self.confirming = self.asking = None
        if connection is None:
            return
        if goodbye and self.blocked is None and connection.connected:
            try:
                connection.close()
                return
            except OSError:  # its socket already gone: nothing to say goodbye on
                pass
        connection.collect()  # a blocked broker reads nothing, a handshake included


class BrokerProbe:
    """One connection to the broker at ``broker_url``, kept for the questions of one process.

    Questions are asked one at a time. A question has ``timeout`` seconds in all for its turn,
    for a new connection where one is needed and for the confirms of a health check's messages
    (a question begun on a kept connection found gone has what is left of them on the next),
    the passive declares of a scrape included: a broker slow to answer the first is not waited
    for again, whole, for each of the others.
    """

    def __init__(self, broker_url: str, timeout: float = 2.0) -> None:
        self.broker_url, self.timeout = broker_url, timeout
        self.connections_opened = 0
        self._lock = threading.Lock()
        self._line = _Line()
        weakref.finalize(self, self._line.let_go)

    def blocked_reason(self) -> str | None:
        """Why RabbitMQ blocks publishing now (its words), or None: it takes publishes.

        Only a connection that publishes hears an alarm, so this publishes the probe's message
        (no queue takes it: the broker drops and confirms it), twice: the first may be read
        before the broker blocks the connection, the second is not. Nothing else on the broker
        is touched.

        Raises:
            TimeoutError: neither a confirm nor a block came within ``timeout`` seconds.
        """
        return self._ask(self._publish_twice)

    def queue_depths(self, names: Iterable[str]) -> dict[str, tuple[int, int]]:
        """Ready messages and consumers of each queue of ``names`` the broker has (a queue not
        declared yet is left out)."""
        return self._ask(lambda deadline: self._depths(names, deadline))

    def close(self) -> None:
        """Close the connection with the closing handshake RabbitMQ expects (dropped without
        one, it logs a warning), waiting at most ``timeout`` seconds for its answer."""
        with self._lock:
            self._line.let_go(goodbye=True)

    def _ask(self, question: Callable[[float], Answer]) -> Answer:
        deadline = time.monotonic() + self.timeout
        if not self._lock.acquire(timeout=self.timeout):
            raise TimeoutError(f"RabbitMQ did not answer the question before in {self.timeout:g} s")
        line = self._line
        try:
            kept = line.connection is not None
            while True:
                try:
                    if line.connection is None:
                        self._connect(deadline)
                    answer = question(deadline)
                except Exception as exc:  # the connection's state is unknown: never reused
                    line.let_go()
                    if kept:  # gone since the last question: ask once more, on a new one
                        kept = False
                        log.debug("the kept broker connection is gone (%s); opening another", exc)
                        continue
                    if isinstance(exc, TimeoutError):
                        raise TimeoutError(
                            f"RabbitMQ did not answer within {self.timeout:g} s"
                        ) from exc
                    raise
                if line.blocked is not None:  # a blocked connection is read no more
                    line.let_go()
                return answer
        finally:
            self._lock.release()

    def _connect(self, deadline: float) -> None:
        line = self._line
        line.connection = kombu.Connection(
            self.broker_url,
            connect_timeout=_left(deadline),
            transport_options={
                "on_blocked": line.heard_blocked,
                "on_unblocked": line.heard_unblocked,
                "read_timeout": self.timeout,  # a closing handshake waits no longer
                "write_timeout": self.timeout,
            },
        )
        line.blocked, line.confirmed = None, 0
        self.connections_opened += 1
        # One attempt, within the question's time (kombu's own connects twice, 2 s apart).
        line.connection.ensure_connection(max_retries=0, reraise_as_library_errors=False)
        channel = line.connection.connection.channel()
        channel.confirm_select()
        channel.events["basic_ack"].add(line.heard_confirm)
        channel.events["basic_nack"].add(line.heard_confirm)
        line.confirming = channel

    def _publish_twice(self, deadline: float) -> str | None:
        line = self._line
        assert line.connection is not None and line.confirming is not None
        transport = line.connection.connection
        _read(transport)  # what the broker said since the last question
        for _ in (1, 2):
            if line.blocked is not None:
                break
            wanted = line.confirmed + 1
            line.confirming.basic_publish(
                amqp.Message(b"", delivery_mode=1), exchange="", routing_key=PROBE_ROUTING_KEY
            )
            while line.confirmed < wanted and line.blocked is None:
                transport.drain_events(timeout=_left(deadline))
        return line.blocked

    def _depths(self, names: Iterable[str], deadline: float) -> dict[str, tuple[int, int]]:
        line = self._line
        assert line.connection is not None
        connection = line.connection.connection
        _read(connection)
        found: dict[str, tuple[int, int]] = {}
        for name in names:
            try:  # each answer waited for until the question's deadline, not its own 2 s
                with connection.transport.having_timeout(_left(deadline)):
                    if line.asking is None or not line.asking.is_open:
                        line.asking = connection.channel()
                    _, messages, consumers = line.asking.queue_declare(name, passive=True)
            except amqp.exceptions.NotFound:
                line.asking = None  # the broker closed the channel that asked
                continue
            found[name] = (messages, consumers)
        return found


def _left(deadline: float) -> float:
    """The seconds left until ``deadline``.

    Raises:
        TimeoutError: none are.
    """
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("RabbitMQ did not answer in time")
    return left


def _read(transport: Any) -> None:
    """Read what the broker has sent (a block, its end, a close) without waiting."""
    try:
        while True:
            transport.drain_events(timeout=0)
    except TimeoutError:
        pass


def blocked_reason(broker_url: str, timeout: float = 2.0) -> str | None:
    """:meth:`BrokerProbe.blocked_reason`, asked once on a connection closed after it."""
    probe = BrokerProbe(broker_url, timeout)
    try:
        return probe.blocked_reason()
    finally:
        probe.close()
