"""RabbitMQ's memory and disk alarms, as a publisher meets them.

When RabbitMQ runs low on memory or disk it stops reading from each connection that publishes:
the message waits in its socket, unconfirmed, until the alarm clears, which may take minutes. It
says so to the connection (``connection.blocked``) as soon as it blocks it. A publisher that
waited for its confirm would hold a submission for as long as the alarm lasts; instead it hears
the block, stops waiting, and refuses the next publishes at once. It cannot ask the broker
whether the alarm is over without publishing, so a probe of its own (one small message that no
queue takes, on a connection of its own) is blocked in its place and hears when it ends.
:mod:`tasks.probe` asks the same of a broker not known to block.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import amqp
import kombu
import kombu.exceptions

log = logging.getLogger(__name__)

PROBE_ROUTING_KEY = "heimdall.broker-alarm-probe"
"""Where the probe's message goes on the default exchange: no queue by that name, so the broker
drops it (and confirms it) once it reads it."""


class BrokerBlocked(kombu.exceptions.KombuError):
    """RabbitMQ blocks publishing: a memory or disk alarm is in effect.

    ``sent``: the message had been written when the block was heard. It waits unconfirmed in
    the broker's socket and is delivered when the alarm clears (unless the broker stops first).
    """

    def __init__(self, reason: str, *, sent: bool) -> None:
        super().__init__(f"RabbitMQ blocks publishing, low on memory or disk ({reason})")
        self.reason = reason
        self.sent = sent


class BrokerAlarm:
    """What one process knows of a resource alarm on its broker.

    :meth:`heard_blocked` and :meth:`heard_unblocked` are the callbacks of every connection of
    the Celery app (its transport options). A publish first :meth:`check`s (refused at once
    while the alarm lasts), then :meth:`listen`s to its connection for a block not yet read,
    and publishes within :meth:`publishing`, where a block heard while it waits for the
    confirm interrupts the wait.
    """

    def __init__(self, broker_url: str) -> None:
        self.broker_url = broker_url
        self.reason: str | None = None
        """Why RabbitMQ blocks publishing (its words), or None: not blocked."""
        self._local = threading.local()
        self._probe_lock = threading.Lock()
        self._probe: kombu.Connection | None = None
        self._probe_channel: amqp.Channel | None = None
        self._probe_sent = 0
        self._probe_confirmed = 0
        self._probe_blocked = False

    def heard_blocked(self, reason: str) -> None:
        """A connection was blocked. During a publish of this thread: stop waiting for its
        confirm (which comes only once the alarm clears)."""
        if self.reason is None:
            log.warning(
                "RabbitMQ blocks publishing (%s): it is low on memory or disk; tasks are not "
                "published until its alarm clears",
                reason,
            )
        self.reason = reason or "connection blocked"
        if getattr(self._local, "publishing", False):
            raise BrokerBlocked(self.reason, sent=True)

    def heard_unblocked(self) -> None:
        if self.reason is not None:
            log.warning("RabbitMQ takes messages again: its alarm is over")
        self.reason = None

    def listen(self, connection: kombu.Connection) -> None:
        """Read what the broker has said on ``connection`` (a block, its end), without waiting.

        A connection not open, or found gone (the broker restarted, or closed it), is left to
        the publish, whose retries reconnect (connecting here would wait out a silent broker's
        connect timeout twice, kombu's two attempts, before the publish's own).

        Raises:
            BrokerBlocked: (``sent`` False) RabbitMQ blocks publishing.
        """
        try:
            transport_connection = connection.connection if connection.connected else None
            while transport_connection is not None:
                transport_connection.drain_events(timeout=0)
        except TimeoutError:
            pass
        except connection.connection_errors + connection.channel_errors as exc:
            log.debug("the connection is gone; the publish reconnects: %s", exc)
        if self.reason is not None:
            raise BrokerBlocked(self.reason, sent=False)

    @contextmanager
    def publishing(self) -> Iterator[None]:
        """Within this block, a block heard on this thread raises :class:`BrokerBlocked`."""
        self._local.publishing = True
        try:
            yield
        finally:
            self._local.publishing = False

    def check(self) -> None:
        """Refuse a publish while the alarm lasts, having asked the probe for news first.

        Raises:
            BrokerBlocked: (``sent`` False) RabbitMQ blocks publishing.
        """
        if self.reason is None and self._probe is None:
            return
        if self._probe_lock.acquire(blocking=False):  # another thread asking: take its answer
            try:
                if self.reason is None:  # heard on a connection of the app: the probe is done
                    self._close_probe()
                else:
                    self._ask_probe()
            finally:
                self._probe_lock.release()
        reason = self.reason
        if reason is not None:
            raise BrokerBlocked(reason, sent=False)

    def _ask_probe(self) -> None:
        """Have the probe publish, and read what the broker answered.

        A connection that publishes during an alarm is blocked, and told when the alarm is
        over. Its first message may still be taken (the broker reads a frame before it
        blocks), so a confirm says the alarm is over only for a second message, sent after the
        first was confirmed on a connection that was not blocked meanwhile.
        """
        try:
            if self._probe_channel is None:
                self._probe = kombu.Connection(
                    self.broker_url,
                    connect_timeout=2.0,
                    transport_options={
                        "on_blocked": self._probe_heard_blocked,
                        "on_unblocked": self._probe_heard_unblocked,
                    },
                )
                channel = self._probe.connection.channel()
                channel.confirm_select()
                channel.events["basic_ack"].add(self._probe_confirm)
                channel.events["basic_nack"].add(self._probe_confirm)
                self._probe_channel = channel
                self._probe_sent = self._probe_confirmed = 0
                self._probe_blocked = False
            while self.reason is not None:
                if self._probe_confirmed >= 2 and not self._probe_blocked:
                    self.heard_unblocked()
                    break
                if self._probe_sent == self._probe_confirmed and not self._probe_blocked:
                    self._probe_channel.basic_publish(
                        amqp.Message(b"", delivery_mode=1),
                        exchange="",
                        routing_key=PROBE_ROUTING_KEY,
                    )
                    self._probe_sent += 1
                self._probe.connection.drain_events(timeout=0)  # type: ignore[union-attr]
        except TimeoutError:
            pass  # nothing more to read: the broker said what it knows
        except Exception as exc:  # the broker down or gone: the publish itself finds out
            log.warning(
                "could not ask RabbitMQ whether its alarm is over: %s: %s", type(exc).__name__, exc
            )
            self.reason = None
        if self.reason is None:
            self._close_probe()

    def _probe_heard_blocked(self, reason: str) -> None:
        self._probe_blocked = True
        self.reason = reason or self.reason or "connection blocked"

    def _probe_heard_unblocked(self) -> None:
        self._probe_blocked = False
        self.heard_unblocked()

    def _probe_confirm(self, *_: object) -> None:
        self._probe_confirmed += 1

    def _close_probe(self) -> None:
        probe, self._probe, self._probe_channel = self._probe, None, None
        if probe is not None:
            probe.collect()  # no closing handshake: the broker may not be reading yet
