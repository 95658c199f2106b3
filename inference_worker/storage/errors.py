"""The store error taxonomy: which failures of Redis and PostgreSQL are worth waiting out."""

from __future__ import annotations

import redis
import sqlalchemy.exc


class PersistenceError(redis.exceptions.ResponseError):
    """Redis refusing writes because its last snapshot failed (``MISCONF``, with
    ``stop-writes-on-bgsave-error``: a full or unwritable disk) until a snapshot succeeds.
    redis-py has no class of its own for it; the store's parser raises this one."""


TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,  # a replica, until a failover promotes it
    redis.exceptions.MasterDownError,  # a replica that serves nothing while its primary is gone
    PersistenceError,  # a Redis that cannot save to disk, until it can
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.InternalError,  # a read-only transaction (a standby), the server's own faults
)
"""Store errors worth retrying with backoff (the service is down, unreachable, or refusing work
for a while); an error about the input is never retried."""

DATABASE_ERRORS: tuple[type[BaseException], ...] = (sqlalchemy.exc.SQLAlchemyError,)
"""Any failure of a statement (the transient ones and the rest: a missing table, a constraint),
for work that may be left undone and is done again elsewhere."""

STORE_FULL_ERRORS: tuple[type[BaseException], ...] = (redis.exceptions.OutOfMemoryError,)
"""Redis at its maxmemory (noeviction): writes fail until workers consume what waits there."""
STORE_ERRORS = (*TRANSIENT_ERRORS, *STORE_FULL_ERRORS)
"""Every store failure a caller answers with "retry later"."""


def store_name(exc: BaseException) -> str:
    """Which store an error came from: ``redis`` or ``postgresql`` (a metric's label)."""
    return "redis" if isinstance(exc, redis.exceptions.RedisError) else "postgresql"


def unavailable_store(exc: BaseException) -> str:
    """Which store a transient error came from, as messages name it."""
    return {"redis": "Redis", "postgresql": "the job database"}[store_name(exc)]


def describe_unavailable(exc: BaseException) -> str:
    """What a client is told when a store fails: "Redis is full", "... is unavailable"."""
    if isinstance(exc, STORE_FULL_ERRORS):
        return "Redis is full"
    return f"{unavailable_store(exc)} is unavailable"
