"""The store error taxonomy: which failures of Redis and PostgreSQL are worth waiting out."""

from __future__ import annotations

import redis
import sqlalchemy.exc

from inference_worker.urls import redact_url


class PersistenceError(redis.exceptions.ResponseError):
    """Redis refusing writes because its last snapshot failed (``MISCONF``, with
    ``stop-writes-on-bgsave-error``: a full or unwritable disk) until a snapshot succeeds.
    redis-py has no class of its own for it; the store's parser raises this one."""


class DatabaseReadOnly(sqlalchemy.exc.OperationalError):
    """PostgreSQL refusing a write in a read-only transaction (SQLSTATE 25006: a standby, a
    database switched read-only) until a failover or its operator lifts it. The engine raises it
    in place of SQLAlchemy's ``InternalError``, which also stands for the server's own faults
    (``XX000``), which waiting does not mend."""


READ_ONLY_TRANSACTION = "25006"
"""SQLSTATE of a write refused in a read-only transaction."""


def as_read_only(error: sqlalchemy.exc.StatementError) -> sqlalchemy.exc.StatementError:
    """``error`` as :class:`DatabaseReadOnly` when the driver's error is a write refused in a
    read-only transaction; otherwise ``error`` itself."""
    if getattr(error.orig, "pgcode", None) != READ_ONLY_TRANSACTION:
        return error
    return DatabaseReadOnly(
        error.statement,
        error.params,
        error.orig,  # type: ignore[arg-type]
        connection_invalidated=getattr(error, "connection_invalidated", False),
    )


TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,  # a replica, until a failover promotes it
    redis.exceptions.MasterDownError,  # a replica that serves nothing while its primary is gone
    PersistenceError,  # a Redis that cannot save to disk, until it can
    sqlalchemy.exc.OperationalError,  # DatabaseReadOnly too: a standby, until a failover
    sqlalchemy.exc.InterfaceError,
)
"""Store errors worth retrying with backoff (the service is down, unreachable, or refusing work
for a while); an error about the input is never retried."""

DATABASE_ERRORS: tuple[type[BaseException], ...] = (sqlalchemy.exc.SQLAlchemyError,)
"""Any failure of a statement (the transient ones and the rest: a missing table, a constraint),
for work that may be left undone and is done again elsewhere."""

INPUT_ERRORS: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.DataError,
    sqlalchemy.exc.IntegrityError,
)
"""PostgreSQL refusing a statement for the values it was given (a number out of range, text it
cannot hold, a NULL where a value is required): the same values fail again, however long one
waits."""

STORE_FULL_ERRORS: tuple[type[BaseException], ...] = (redis.exceptions.OutOfMemoryError,)
"""Redis at its maxmemory (noeviction): writes fail until workers consume what waits there."""
STORE_ERRORS = (*TRANSIENT_ERRORS, *STORE_FULL_ERRORS)
"""Every store failure a caller answers with "retry later"."""


MISSING_SCHEMA_CODES = ("42P01", "3F000")
"""SQLSTATEs of a table or schema that does not exist: a job database the service has not
migrated yet."""


def describe_missing_schema(exc: sqlalchemy.exc.StatementError, schema: str) -> str | None:
    """What to do about a job database without the service's tables; ``None`` for any other
    error."""
    if getattr(exc.orig, "pgcode", None) not in MISSING_SCHEMA_CODES:
        return None
    return (
        f"the job database has no tables in schema {schema!r} yet: run `heimdall-inference "
        "migrate` (the worker and the api do at start)"
    )


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


def describe_failure(exc: BaseException, *, database_url: str, redis_url: str) -> str:
    """What an operator is told when a command meets a store that fails: the store, where it
    was asked (the URL without its password) and the first line of the driver's reason —
    SQLAlchemy's wrapping (the driver's class, the statement, a link to its docs) left out."""
    redis_failed = store_name(exc) == "redis"
    where = redact_url(redis_url if redis_failed else database_url)
    state = "is full" if isinstance(exc, STORE_FULL_ERRORS) else "is unavailable"
    return f"{unavailable_store(exc)} at {where} {state}: {first_line(exc)}"


def first_line(exc: BaseException) -> str:
    """The first line of an error's reason — the driver's own where SQLAlchemy wraps one (its
    class, the statement and a link to its docs left out) — or the class's name when it has no
    text."""
    cause = getattr(exc, "orig", None) or exc
    text = str(cause).strip()
    return text.splitlines()[0] if text else type(cause).__name__
