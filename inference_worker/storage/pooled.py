"""Running the job store's statements on pooled PostgreSQL connections.

Every statement the job store runs is one round trip in autocommit and safe to repeat, so a
connection the database dropped (it restarted since the connection was last used) costs a
retry on another connection, not an error, and no ping is paid on each checkout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

T = TypeVar("T")


def run(engine: Engine, work: Callable[[Connection], T]) -> T:
    """Run ``work`` on a pooled SQLAlchemy connection, and once more on a fresh one if the
    pooled one turned out dead (SQLAlchemy then discards every older pooled connection)."""
    try:
        with engine.connect() as connection:
            return work(connection)
    except sa.exc.DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
    with engine.connect() as connection:
        return work(connection)


def driver_rows(
    engine: Engine, statement: str, params: dict[str, Any], *, first_only: bool = False
) -> list[dict[str, Any]]:
    """The rows of one statement run on a pooled driver connection, with errors as
    SQLAlchemy's. For the statements every job runs (a submission's insert, a poll's read, a
    batch's start and results), where SQLAlchemy's connection and result objects cost more CPU
    than the driver's own work (0.22 against 0.14 ms a submission's insert).

    A pooled connection found dead is discarded and the statement run on the next, until a live
    or new one answers: each pooled connection may be dead.
    """
    dialect = engine.dialect
    dbapi_error = dialect.loaded_dbapi.Error
    pool = engine.pool
    pooled = pool.size() if isinstance(pool, sa.pool.QueuePool) else 0
    for attempt in range(1, pooled + 2):
        raw = cursor = None
        try:
            raw = engine.raw_connection()
            cursor = raw.cursor()
            cursor.execute(statement, params)
            rows = cursor.fetchmany(1) if first_only else cursor.fetchall()
            if not rows:
                return []
            names = [column[0] for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in rows]
        except dbapi_error as exc:
            if raw is None:  # no connection to be had
                raise sa.exc.DBAPIError.instance(None, None, exc, dbapi_error) from exc
            dead = dialect.is_disconnect(exc, raw.dbapi_connection, cursor)
            if dead:
                raw.invalidate(exc)
            if dead and attempt <= pooled:
                continue
            raise sa.exc.DBAPIError.instance(
                statement, params, exc, dbapi_error, connection_invalidated=dead
            ) from exc
        finally:
            if cursor is not None and not cursor.closed:
                try:
                    cursor.close()
                except dbapi_error:
                    pass
            if raw is not None:
                raw.close()
    raise AssertionError("unreachable")
