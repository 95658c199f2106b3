"""Running the job store's statements on pooled PostgreSQL connections.

Every statement the job store runs is one round trip in autocommit and safe to repeat, so a
connection the database dropped (it restarted since the connection was last used) costs a
retry on another connection, not an error, and no ping is paid on each checkout.

The statements every job runs are prepared once on each connection (``PREPARE``) and then only
executed: PostgreSQL plans them once instead of at every call, which for a small batch's
statements is more of the server's work than the statement itself. (A pooler between the
service and PostgreSQL must keep a server connection per client connection, as in PgBouncer's
session mode.)
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from inference_worker.storage.database_silence import DatabaseSilent
from inference_worker.storage.errors import as_read_only
from inference_worker.storage.job_sql import PREPARED_NAMES

T = TypeVar("T")

PREPARED_KEY = "heimdall_prepared"
"""Key, in a pooled connection's ``info`` (cleared when the connection is replaced), of the set
of statement names prepared on it."""
STALE_PLAN = "0A000"
"""SQLSTATE of "cached plan must not change result type": the table changed shape (a migration)
since the statement was prepared on this connection."""
ALREADY_PREPARED = "42P05"
"""SQLSTATE of a ``PREPARE`` whose name exists on the connection (prepared by a call whose answer
was lost)."""


@dataclass(frozen=True)
class Prepared:
    """A statement written with ``%(name)s`` parameters, in its ``PREPARE`` / ``EXECUTE`` form."""

    name: str
    prepare: str
    execute: str
    params: tuple[str, ...]


@lru_cache(maxsize=64)
def prepared_form(statement: str) -> Prepared:
    """The ``PREPARE`` and ``EXECUTE`` of a statement (each named parameter becomes ``$n``, in the
    order of first use), as ``heimdall_<name>`` for the job store's statements
    (``job_sql.PREPARED_NAMES``: operators then read ``EXECUTE heimdall_start_many(...)`` in
    ``pg_stat_activity``), after a digest of its text for any other."""
    names: list[str] = []

    def positional(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    text = re.sub(r"%\((\w+)\)s", positional, statement).replace("%%", "%")
    name = PREPARED_NAMES.get(statement) or hashlib.sha1(statement.encode()).hexdigest()[:16]
    label = f"heimdall_{name}"
    arguments = f"({', '.join(['%s'] * len(names))})" if names else ""
    prepare, execute = f"PREPARE {label} AS {text}", f"EXECUTE {label}{arguments}"
    return Prepared(label, prepare, execute, tuple(names))


def execute_prepared(raw: Any, cursor: Any, form: Prepared, params: dict[str, Any]) -> None:
    """Run a statement on a pooled driver connection as a prepared statement, preparing it first
    if this connection has not yet."""
    done: set[str] = raw.info.setdefault(PREPARED_KEY, set())
    if form.name not in done:
        try:
            cursor.execute(form.prepare)
        except Exception as exc:
            if getattr(exc, "pgcode", None) != ALREADY_PREPARED:
                raise
        done.add(form.name)
    cursor.execute(form.execute, [params[name] for name in form.params])


def forget_prepared(raw: Any, cursor: Any, form: Prepared) -> None:
    """Drop a statement prepared on this connection (its plan went stale), so the next call
    prepares it again."""
    raw.info.setdefault(PREPARED_KEY, set()).discard(form.name)
    cursor.execute(f"DEALLOCATE {form.name}")


def run(engine: Engine, work: Callable[[Connection], T]) -> T:
    """Run ``work`` on a pooled SQLAlchemy connection, and once more on a fresh one if the
    pooled one turned out dead (SQLAlchemy then discards every older pooled connection)."""
    try:
        with engine.connect() as connection:
            return work(connection)
    except sa.exc.DBAPIError as exc:
        if not exc.connection_invalidated or isinstance(exc.orig, DatabaseSilent):
            raise  # a server that answers nothing is not asked again on another connection
    with engine.connect() as connection:
        return work(connection)


def driver_rows(
    engine: Engine, statement: str, params: dict[str, Any], *, first_only: bool = False
) -> list[dict[str, Any]]:
    """The rows of one statement run on a pooled driver connection, prepared (see the module's
    notes), with errors as SQLAlchemy's. For the statements every job runs (a submission's
    insert, a poll's read, a batch's start and results), where SQLAlchemy's connection and result
    objects cost more CPU than the driver's own work (0.22 against 0.14 ms a submission's insert).

    A pooled connection found dead is discarded and the statement run on the next, until a live
    or new one answers: each pooled connection may be dead. A statement whose prepared plan went
    stale (the table changed shape since) is prepared again and run once more.
    """
    form = prepared_form(statement)
    dialect = engine.dialect
    dbapi_error = dialect.loaded_dbapi.Error
    pool = engine.pool
    pooled = pool.size() if isinstance(pool, sa.pool.QueuePool) else 0
    stale_retried = False
    for attempt in range(1, pooled + 3):
        raw = cursor = None
        try:
            raw = engine.raw_connection()
            cursor = raw.cursor()
            execute_prepared(raw, cursor, form, params)
            rows = cursor.fetchmany(1) if first_only else cursor.fetchall()
            if not rows:
                return []
            names = [column[0] for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in rows]
        except dbapi_error as exc:
            if raw is None:  # no connection to be had
                raise sa.exc.DBAPIError.instance(None, None, exc, dbapi_error) from exc
            if getattr(exc, "pgcode", None) == STALE_PLAN and not stale_retried:
                stale_retried = True
                try:
                    forget_prepared(raw, cursor, form)
                except dbapi_error as again:
                    raw.invalidate(again)  # a new connection prepares it afresh
                continue
            dead = dialect.is_disconnect(exc, raw.dbapi_connection, cursor)
            if dead:
                raw.invalidate(exc)
            if dead and attempt <= pooled and not isinstance(exc, DatabaseSilent):
                continue
            raise as_read_only(
                sa.exc.DBAPIError.instance(
                    statement, params, exc, dbapi_error, connection_invalidated=dead
                )
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
