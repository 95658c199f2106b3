"""The store error taxonomy: which failures of Redis and PostgreSQL are worth waiting out."""

from __future__ import annotations

import redis
import sqlalchemy.exc

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
)
"""Store errors worth retrying with backoff (the service is down or unreachable); an error about
the input is never retried."""


def unavailable_store(exc: BaseException) -> str:
    """Which store a transient error came from, as messages name it."""
    return "Redis" if isinstance(exc, redis.exceptions.RedisError) else "the job database"
