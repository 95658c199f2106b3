"""A PostgreSQL that stops answering fails a statement after a deadline, instead of never.

A server paused, stalled or swapping out keeps its connections: the kernel still acknowledges
what is sent and answers keepalives, so neither the dead-peer settings
(:mod:`~inference_worker.storage.dead_peers`) nor the server's own statement timeout ever end a
wait, and libpq waits for an answer without a limit: each shim request and each worker's job
that met such a server was held until it answered again (a submission and ``/health`` waited
past 70 s, their threads with them).

So every psycopg2 connection of the process waits through :func:`wait` (psycopg2's wait
callback, which runs libpq in non-blocking mode): a connection of the service's engines gives
up on a statement :data:`REPLY_MARGIN_S` after the statement timeout the server would have
enforced (a server merely slow answers with its own error first), and a connection being made
gives up after the URL's ``connect_timeout`` (libpq's limit, which it no longer enforces
itself in this mode) for each host named. Giving up closes the connection (psycopg2 does so
when its callback fails); SQLAlchemy then discards it, and the error is a transient store
error like any other disconnection. A caller that needs its answer sooner (a health check)
sets its own limit with :func:`answered_within`. After a silence, the service's calls to that
server fail at once for a while (:mod:`~inference_worker.storage.silence`), as Redis's do.

A statement given up on may still run when the server wakes: libpq sent it before it waited.
A job's row written that way is the one a dying shim leaves, which the relay finishes.
"""

from __future__ import annotations

import logging
import select
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from typing import Any

import psycopg2
import psycopg2.extensions as pg

from inference_worker.storage.silence import SilenceWindow, StoreSilent, window_for

log = logging.getLogger(__name__)

REPLY_MARGIN_S = 2.0
"""How much longer than the statement timeout a statement is waited on."""
LONGEST_POLL_S = 3_600.0
"""The longest single wait: ``poll`` takes at most 2^31 - 1 ms (~24.8 days), a statement timeout
at PostgreSQL's bound plus the margin is longer."""

_limit: ContextVar[float | None] = ContextVar("heimdall_database_reply_limit", default=None)


class DatabaseSilent(psycopg2.OperationalError):
    """PostgreSQL answered nothing within the limit (the connection is closed)."""


class AnsweringConnection(pg.connection):
    """A psycopg2 connection whose statements are waited on at most ``reply_within_s``. While
    its server's window is closed it is refused before its socket is opened (a silent server's
    kernel would take the connection and leave it half open)."""

    reply_within_s: float | None = None

    def __init__(self, dsn: str, *args: Any, **kwargs: Any) -> None:
        try:
            window_of(dsn).refuse_while_closed()
        except StoreSilent as exc:
            raise DatabaseSilent(str(exc)) from None
        super().__init__(dsn, *args, **kwargs)


@lru_cache(maxsize=16)
def connection_class(reply_within_s: float) -> type[AnsweringConnection]:
    """The connection class (psycopg2's ``connection_factory``) of an engine whose statements
    are given up on after ``reply_within_s``."""
    return type(
        "AnsweringConnection", (AnsweringConnection,), {"reply_within_s": float(reply_within_s)}
    )


@contextmanager
def answered_within(seconds: float) -> Iterator[None]:
    """Statements run in the block (this thread's) are given up on after ``seconds`` (at most
    their connection's own limit, or an enclosing block's)."""
    enclosing = _limit.get()
    token = _limit.set(seconds if enclosing is None else min(seconds, enclosing))
    try:
        yield
    finally:
        _limit.reset(token)


def connect_limit_s(dsn: str) -> float | None:
    """How long libpq itself would wait to make a connection of ``dsn``: ``connect_timeout``
    (at least 2 s, as libpq reads it) for each host named; ``None`` without one."""
    parameters = pg.parse_dsn(dsn)
    try:
        timeout = int(parameters.get("connect_timeout", 0))
    except ValueError:
        return None
    if timeout <= 0:
        return None
    hosts = max(1, len(str(parameters.get("host", "")).split(",")))
    return float(max(timeout, 2) * hosts)


def reply_limit_s(connection: pg.connection) -> float | None:
    """How long ``connection`` waits for its server now: while it is being made, libpq's connect
    limit; then its class's statement limit (``None``: a connection the service did not make
    waits as libpq did); either at most the caller's own (:func:`answered_within`), which
    applies to any connection (an MLflow store's)."""
    if connection.status == pg.STATUS_SETUP:
        own = connect_limit_s(connection.dsn)
    else:
        own = getattr(connection, "reply_within_s", None)
    limits = [limit for limit in (own, _limit.get()) if limit is not None]
    return min(limits) if limits else None


@lru_cache(maxsize=64)
def window_of(dsn: str) -> SilenceWindow:
    """The process's window (:mod:`~inference_worker.storage.silence`) of the server and
    database a connection string names: every engine of the process learns from one silence."""
    server = pg.parse_dsn(dsn)
    return window_for("PostgreSQL", tuple(server.get(k, "") for k in ("host", "port", "dbname")))


def wait(connection: pg.connection) -> None:
    """psycopg2's wait callback: poll the connection until libpq is done, giving up (raising
    :class:`DatabaseSilent`) once :func:`reply_limit_s` has passed without an answer. A
    connection of the service's, or any with a caller's limit, also fails at once while its
    server's window is closed."""
    limit = reply_limit_s(connection)
    if not isinstance(connection, AnsweringConnection) and _limit.get() is None:
        _poll(connection, limit)  # another library's connection, waited on as libpq did
        return
    window = window_of(connection.dsn)
    try:
        trial = window.admit()
    except StoreSilent as exc:
        raise DatabaseSilent(str(exc)) from None
    try:
        _poll(connection, limit)
    except DatabaseSilent:
        window.went_silent()
        raise
    except psycopg2.Error:
        window.answered(trial)  # a refusal is an answer
        raise
    window.answered(trial)


def _poll(connection: pg.connection, limit: float | None) -> None:
    doing = "connecting" if connection.status == pg.STATUS_SETUP else "a statement"
    deadline = None if limit is None else time.monotonic() + limit
    waiting, fd = select.poll(), -1
    while True:
        state = connection.poll()
        if state == pg.POLL_OK:
            return
        if connection.fileno() != fd:  # a new socket: libpq moved on to the next host
            waiting, fd = select.poll(), connection.fileno()
        if state == pg.POLL_READ:
            waiting.register(fd, select.POLLIN)
        elif state == pg.POLL_WRITE:
            waiting.register(fd, select.POLLOUT)
        else:
            raise psycopg2.OperationalError(f"unexpected state from psycopg2's poll: {state!r}")
        if deadline is None:
            waiting.poll()
            continue
        left = deadline - time.monotonic()
        if left <= 0:
            raise DatabaseSilent(
                f"PostgreSQL answered nothing in {limit:g} s ({doing}): it is paused, stalled "
                "or cut off; the connection is closed"
            )
        waiting.poll(min(left, LONGEST_POLL_S) * 1e3)  # then libpq is asked again


def install() -> None:
    """Make :func:`wait` the process's wait callback (once; each process that connects calls
    it). Another library's callback (a coroutine library's) is left in place, with a warning:
    its waits have no limit."""
    current = pg.get_wait_callback()
    if current is wait:
        return
    if current is not None:
        log.warning(
            "psycopg2 already has a wait callback (%r): a PostgreSQL that stops answering is "
            "waited on without a limit",
            current,
        )
        return
    pg.set_wait_callback(wait)
