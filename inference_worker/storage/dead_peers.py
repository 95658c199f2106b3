"""When a connection to a store whose host went silent is given up, for PostgreSQL and Redis
alike.

A store whose host died, or that sits behind a network that drops its packets, sends no reset:
a connection to it waits on Linux's defaults, ~15 min of retransmissions for data sent and 2 h
before the first keepalive of an idle connection. A server's own timeouts (PostgreSQL's
statement timeout) are never enforced then. With these, ~10 s of unanswered keepalives or
unacknowledged data end the connection; a server merely slow still acknowledges both.
"""

from __future__ import annotations

from socket import TCP_KEEPCNT, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_USER_TIMEOUT

KEEPALIVE_IDLE_S = 5
KEEPALIVE_INTERVAL_S = 2
KEEPALIVE_COUNT = 3
USER_TIMEOUT_MS = 10_000

LIBPQ_OPTIONS = {
    "keepalives": 1,
    "keepalives_idle": KEEPALIVE_IDLE_S,
    "keepalives_interval": KEEPALIVE_INTERVAL_S,
    "keepalives_count": KEEPALIVE_COUNT,
    "tcp_user_timeout": USER_TIMEOUT_MS,
}
"""As libpq's connection options (a database URL's own settings are kept: ``engine``)."""

SOCKET_OPTIONS = {
    TCP_KEEPIDLE: KEEPALIVE_IDLE_S,
    TCP_KEEPINTVL: KEEPALIVE_INTERVAL_S,
    TCP_KEEPCNT: KEEPALIVE_COUNT,
    TCP_USER_TIMEOUT: USER_TIMEOUT_MS,
}
"""As a TCP socket's options (a Redis over TCP: ``redis_store.connect``; the connection that
listens for finished jobs only reads, and without them listened to a dead host as long as the
shim ran)."""
