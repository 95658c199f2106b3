"""What a process makes of RabbitMQ's blocked and unblocked notices (no broker: a connection
stand-in that replays frames; the real alarm is ``tests/integration/test_broker_alarm.py``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import kombu
import pytest

from tasks.alarm import BrokerAlarm, BrokerBlocked


class ReplayedConnection:
    """A kombu connection's stand-in: each ``drain_events`` runs the next notice, then there is
    nothing more to read (``TimeoutError``), or the connection is gone."""

    connection_errors = (ConnectionResetError,)
    channel_errors = ()
    connected = True

    def __init__(self, notices: list[Callable[[], None]], gone: bool = False) -> None:
        self.notices = list(notices)
        self.gone = gone
        self.connection = self

    def drain_events(self, timeout: float) -> None:
        assert timeout == 0  # never waits
        if self.gone:
            raise ConnectionResetError(104, "Connection reset by peer")
        if not self.notices:
            raise TimeoutError
        self.notices.pop(0)()


def replayed(notices: list[Callable[[], None]], gone: bool = False) -> kombu.Connection:
    """A :class:`ReplayedConnection`, handed over where a kombu connection goes."""
    return cast(kombu.Connection, ReplayedConnection(notices, gone))


def test_a_block_heard_outside_a_publish_is_remembered_not_raised():
    alarm = BrokerAlarm("amqp://unused")
    alarm.heard_blocked("low on memory")
    assert alarm.reason == "low on memory"
    alarm.heard_unblocked()
    assert alarm.reason is None


def test_a_block_heard_while_a_publish_waits_for_its_confirm_interrupts_it():
    alarm = BrokerAlarm("amqp://unused")
    with pytest.raises(BrokerBlocked) as raised, alarm.publishing():
        alarm.heard_blocked("low on disk")
    assert raised.value.sent
    assert "low on disk" in str(raised.value)
    alarm.heard_blocked("still")  # the publish is over: no longer raised
    assert alarm.reason == "still"


def test_a_block_waiting_on_the_connection_refuses_the_publish_before_it_is_sent():
    alarm = BrokerAlarm("amqp://unused")
    connection = replayed([lambda: alarm.heard_blocked("low on memory")])
    with pytest.raises(BrokerBlocked) as raised:
        alarm.listen(connection)
    assert not raised.value.sent


def test_an_unblock_waiting_on_the_connection_lets_the_publish_go():
    alarm = BrokerAlarm("amqp://unused")
    alarm.heard_blocked("low on memory")
    alarm.listen(replayed([alarm.heard_unblocked]))
    assert alarm.reason is None


def test_a_connection_found_gone_is_left_to_the_publish_to_reconnect():
    alarm = BrokerAlarm("amqp://unused")
    alarm.listen(replayed([], gone=True))
    assert alarm.reason is None


def test_a_connection_not_open_is_left_to_the_publish_to_open():
    """Opening it here waited out a silent broker's connect timeout twice (kombu's two
    attempts) before the publish's own."""
    alarm = BrokerAlarm("amqp://unused")
    closed = ReplayedConnection([lambda: pytest.fail("read a connection not open")])
    closed.connected = False
    alarm.listen(cast(kombu.Connection, closed))
    assert closed.notices and alarm.reason is None
