"""A store whose host died or went behind a network that drops its packets sends no reset.

PostgreSQL: without keepalives or a TCP user timeout, a statement sent to it waited ~15 min
(Linux's retransmissions) and an idle pooled connection 2 h before failing — a shim thread or a
worker held as long, since the statement timeout is the server's to enforce. Redis: commands
time out after 5 s, but the shim's connection listening for finished jobs only reads, and
listened to a dead peer as long as the shim ran (each ``?wait=`` then lasted its whole wait).
Every connection of both now has TCP keepalives and a user timeout set
(``storage.dead_peers``), unless a PostgreSQL URL sets its own. These tests read the options
on the connections' sockets, where the kernel acts on them; ``test_dead_host`` cuts a link of
its own under a statement and sees the kernel give up."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from inference_worker.settings import Settings
from inference_worker.storage.engine import create_engine
from inference_worker.storage.redis_store import connect

GIVE_UP_IN_SECONDS = {
    "keepalive": 1,
    "idle": 5,
    "interval": 2,
    "count": 3,
    "user_timeout_ms": 10_000,
}


@contextmanager
def tcp_socket_of(engine: sa.Engine) -> Iterator[socket.socket]:
    with engine.connect() as connection:
        fd = connection.connection.dbapi_connection.fileno()  # type: ignore[union-attr]
        sock = socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM)  # a duplicate descriptor
        try:
            yield sock
        finally:
            sock.close()


def options(sock: socket.socket) -> dict[str, int]:
    return {
        "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        "idle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        "interval": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        "count": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
        "user_timeout_ms": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
    }


def test_job_store_connections_give_up_on_a_silent_peer_within_seconds(settings: Settings):
    engine = create_engine(settings.database_url, settings.database_schema)
    try:
        with tcp_socket_of(engine) as sock:
            assert options(sock) == GIVE_UP_IN_SECONDS
    finally:
        engine.dispose()


def test_a_database_url_s_own_tcp_settings_are_kept(settings: Settings):
    url = sa.engine.make_url(settings.database_url).update_query_dict({"keepalives_idle": "30"})
    engine = create_engine(url.render_as_string(hide_password=False), settings.database_schema)
    try:
        with tcp_socket_of(engine) as sock:
            got = options(sock)
            assert (got["idle"], got["user_timeout_ms"]) == (30, 10_000)
    finally:
        engine.dispose()


def test_redis_connections_and_the_finished_jobs_listener_give_up_on_a_silent_peer(
    settings: Settings,
):
    client = connect(settings.redis_url)
    listener = client.pubsub(ignore_subscribe_messages=True)  # as FinishedJobs listens
    try:
        client.ping()
        listener.subscribe("heimdall-test-dead-peers")
        used = client.connection_pool.get_connection()
        try:
            assert listener.connection is not None
            for sock in (used._sock, listener.connection._sock):
                assert sock is not None and options(sock) == GIVE_UP_IN_SECONDS
        finally:
            client.connection_pool.release(used)
    finally:
        listener.close()
        client.close()
