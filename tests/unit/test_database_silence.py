"""How long a PostgreSQL connection waits for its server (pure logic: the limits read from a
connection string, its class and the caller's own)."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import psycopg2.extensions as pg
import pytest

from inference_worker.settings_checks import POSTGRESQL_TIMEOUT_MAX_S
from inference_worker.storage.database_silence import (
    REPLY_MARGIN_S,
    AnsweringConnection,
    _poll,
    answered_within,
    connect_limit_s,
    connection_class,
    reply_limit_s,
    window_of,
)


@pytest.mark.parametrize(
    ("dsn", "limit"),
    [
        ("host=db connect_timeout=3", 3.0),
        ("host=db connect_timeout=1", 2.0),  # libpq reads less than 2 as 2
        ("host=primary,standby connect_timeout=3", 6.0),  # libpq gives each host its own
        ("host=db connect_timeout=0", None),  # 0: libpq waits without a limit
        ("host=db", None),
        ("host=db connect_timeout=soon", None),  # libpq refuses it itself
    ],
)
def test_a_connection_is_waited_on_as_long_as_libpq_would(dsn, limit):
    assert connect_limit_s(dsn) == limit


def connection(status: int, reply_within_s: float | None = None) -> SimpleNamespace:
    return SimpleNamespace(
        status=status, dsn="host=db connect_timeout=3", reply_within_s=reply_within_s
    )


def test_a_statement_waits_its_class_limit_or_the_callers_shorter_one():
    ready = connection(pg.STATUS_READY, reply_within_s=17.0)
    assert reply_limit_s(ready) == 17.0
    with answered_within(2.0):
        assert reply_limit_s(ready) == 2.0
        assert reply_limit_s(connection(pg.STATUS_SETUP)) == 2.0  # connecting, too
    with answered_within(30.0):
        assert reply_limit_s(ready) == 17.0  # never longer than the connection's own
        with answered_within(1.0):
            assert reply_limit_s(ready) == 1.0
    with answered_within(2.0), answered_within(10.0):  # nor than an enclosing block's
        assert reply_limit_s(ready) == 2.0
    assert reply_limit_s(ready) == 17.0


def test_a_connection_the_service_did_not_make_waits_as_before_unless_its_caller_says():
    assert reply_limit_s(connection(pg.STATUS_READY)) is None
    with answered_within(10.0):  # an MLflow store's, asked by the registry
        assert reply_limit_s(connection(pg.STATUS_READY)) == 10.0


def test_each_limit_has_one_class_and_each_server_one_window():
    made = connection_class(17.0)
    assert issubclass(made, AnsweringConnection) and made.reply_within_s == 17.0
    assert connection_class(17.0) is made
    one = window_of("host=db port=5432 dbname=jobs application_name=a")
    assert window_of("host=db port=5432 dbname=jobs application_name=b") is one
    assert window_of("host=db port=5433 dbname=jobs") is not one


class Answering:
    """A connection whose answer is already waiting on its socket: libpq reads it on the second
    poll."""

    status = pg.STATUS_READY
    dsn = "host=db"

    def __init__(self, reply_within_s: float) -> None:
        self.reply_within_s = reply_within_s
        self.mine, self.server = socket.socketpair()
        self.server.sendall(b"answer")
        self.states = [pg.POLL_READ, pg.POLL_OK]

    def poll(self) -> int:
        return self.states.pop(0)

    def fileno(self) -> int:
        return self.mine.fileno()


def test_a_limit_past_what_one_poll_takes_is_waited_in_parts():
    """A statement timeout at PostgreSQL's bound (~24.8 days) plus the margin passed the
    longest wait ``poll`` takes (2^31 - 1 ms): every statement failed with ``OverflowError``."""
    answering = Answering(POSTGRESQL_TIMEOUT_MAX_S + REPLY_MARGIN_S)
    try:
        _poll(answering, reply_limit_s(answering))
    finally:
        answering.mine.close()
        answering.server.close()
    assert answering.states == []
