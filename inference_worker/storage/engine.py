"""PostgreSQL connections and migrations."""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine

from inference_worker.settings import Settings
from inference_worker.storage import database_silence
from inference_worker.storage.dead_peers import LIBPQ_OPTIONS
from inference_worker.storage.errors import as_read_only

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def create_engine(
    database_url: str,
    schema: str,
    *,
    pool_size: int = 5,
    role: str = "heimdall",
    statement_timeout_s: float = 15.0,
) -> Engine:
    """An engine whose connections use ``schema`` (tests use a schema of their own).

    Connections name their process (``application_name``: role and pid), so an operator sees in
    ``pg_stat_activity`` which worker or shim process holds which connection. No statement runs
    longer than ``statement_timeout_s``: a hung database turns into an error that is retried;
    one that cannot be reached, after ~10 s (:mod:`~inference_worker.storage.dead_peers`); one
    that stops answering, :data:`~.database_silence.REPLY_MARGIN_S` after the statement timeout
    (:mod:`~inference_worker.storage.database_silence`).

    Connections run in autocommit: every state change of a job is one statement, so BEGIN and
    COMMIT would only add round trips. Code that needs a transaction asks for one
    (``connection.execution_options(isolation_level="READ COMMITTED")``).
    """
    timeout_ms = statement_timeout_s * 1e3
    given = sa.engine.make_url(database_url).query
    dead_peer = {name: value for name, value in LIBPQ_OPTIONS.items() if name not in given}
    database_silence.install()
    answering = database_silence.connection_class(
        statement_timeout_s + database_silence.REPLY_MARGIN_S
    )
    engine = sa.create_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=5,
        # No ping on every checkout (a round trip per transaction): a connection that died is
        # noticed on use, invalidated, and the operation retried as a transient error.
        pool_pre_ping=False,
        isolation_level="AUTOCOMMIT",
        pool_reset_on_return=None,  # nothing to roll back in autocommit
        pool_recycle=1800,
        connect_args={
            "options": f"-csearch_path={schema} -cstatement_timeout={round(timeout_ms)}",
            "connect_timeout": 3,
            "application_name": f"{role} pid {os.getpid()}",
            "connection_factory": answering,
            **dead_peer,
        },
    )
    sa.event.listen(engine, "handle_error", _read_only_is_unavailable)
    return engine


def _read_only_is_unavailable(context: sa.engine.ExceptionContext) -> Exception | None:
    """A write refused in a read-only transaction raises :class:`DatabaseReadOnly` (retried,
    as a database that is down) instead of an ``InternalError`` (not retried)."""
    error = context.sqlalchemy_exception
    if not isinstance(error, sa.exc.StatementError):
        return None
    replaced = as_read_only(error)
    return None if replaced is error else replaced


def engine_for(settings: Settings, *, role: str = "heimdall", pool_size: int = 5) -> Engine:
    """The engine of the settings' database and schema, with their statement timeout."""
    return create_engine(
        settings.database_url,
        settings.database_schema,
        pool_size=pool_size,
        role=role,
        statement_timeout_s=settings.database_statement_timeout_s,
    )


class UnknownMigration(RuntimeError):
    """The job schema is at a migration this release does not know: a newer release migrated
    it (this one may not downgrade it, nor work on its tables)."""

    def __init__(self, schema: str, revision: str) -> None:
        newest = known_revisions()[-1]
        super().__init__(
            f"the job schema {schema!r} is at migration {revision}, which this release does "
            f"not know (its newest is {newest}): a newer release migrated it; run that release "
            "here"
        )


def migrate(engine: Engine, schema: str) -> None:
    """Create the schema if needed and bring it to the newest revision.

    Safe to call from many processes at once: a PostgreSQL advisory lock serializes them.

    Raises:
        UnknownMigration: the schema is at a migration of a newer release.
    """
    lock_id = zlib.crc32(f"heimdall-migrate:{schema}".encode())
    with engine.connect() as connection:
        connection.execution_options(isolation_level="READ COMMITTED")
        connection.execute(sa.text("SELECT pg_advisory_lock(:id)"), {"id": lock_id})
        try:
            # Only when missing: PostgreSQL checks the right to create a schema even when it
            # exists, and a service's role may have none where its schema was made for it.
            exists = connection.execute(
                sa.text("SELECT 1 FROM pg_namespace WHERE nspname = :schema"), {"schema": schema}
            ).first()
            if exists is None:
                connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
            connection.commit()
            revision = _revision(connection, schema)
            if revision is not None and revision not in known_revisions():
                raise UnknownMigration(schema, revision)
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS_DIR))
            config.attributes["connection"] = connection
            config.attributes["schema"] = schema
            command.upgrade(config, "head")
            connection.commit()
        finally:
            if connection.in_transaction():  # a step failed: its transaction is aborted
                connection.rollback()
            connection.execute(sa.text("SELECT pg_advisory_unlock(:id)"), {"id": lock_id})
            connection.commit()


def schema_revision(engine: Engine, schema: str) -> str | None:
    """The migration the job schema ``schema`` is at; None when it was never migrated."""
    with engine.connect() as connection:
        return _revision(connection, schema)


UPKEEP_POOL = 2
"""Connections a worker's main process keeps (its relay of unconfirmed submissions and its
upkeep), as do the ``jobs`` commands."""
WORKER_POOL = 2
"""Connections a worker's pool process keeps (its batches' statements, its reload's reads)."""


def shim_pool(settings: Settings) -> int:
    """Connections a shim process keeps: one for each request thread, one for the thread that
    marks jobs published (``api_shim/services.py``). Its processes' count comes from the
    settings: ``check`` does not see an ``api --workers`` given on the command line."""
    return settings.api_threads + 1


@dataclass(frozen=True)
class ConnectionNeed:
    """The connections one host's service keeps at most, by its settings: the shim's
    processes' and the worker's (its main process and its pool processes). Each process may
    open a few more for a moment (its pool's overflow) and closes them."""

    shim: int
    worker: int

    @property
    def total(self) -> int:
        return self.shim + self.worker


def connection_need(settings: Settings) -> ConnectionNeed:
    """What :class:`ConnectionNeed` the settings give (``HEIMDALL_API_WORKERS`` ×
    (``HEIMDALL_API_THREADS`` + 1); ``HEIMDALL_WORKER_CONCURRENCY`` × 2 + 2)."""
    return ConnectionNeed(
        shim=settings.api_workers * shim_pool(settings),
        worker=UPKEEP_POOL + settings.worker_concurrency * WORKER_POOL,
    )


@dataclass(frozen=True)
class ConnectionUse:
    """The server's client connections: how many are open, how many it allows roles without
    superuser rights, and how many of the open ones heimdall's processes hold (by the
    ``application_name`` each names itself with)."""

    open: int
    allowed: int
    ours: int


def connection_use(engine: Engine) -> ConnectionUse:
    """How many connections the database server has open and allows (every database's).

    A role without ``pg_read_all_stats`` sees no ``backend_type`` for other roles' sessions:
    those are counted as clients (the logical replication launcher among them, one too many).
    """
    client = "(backend_type = 'client backend' OR (backend_type IS NULL AND usesysid IS NOT NULL))"
    with engine.connect() as connection:
        row = connection.execute(
            sa.text(
                f"SELECT count(*) FILTER (WHERE {client}),"
                " current_setting('max_connections')::int"
                " - current_setting('superuser_reserved_connections')::int"
                # PostgreSQL 16 and later reserve some for roles granted pg_use_reserved_connections
                " - coalesce(nullif(current_setting('reserved_connections', true), ''), '0')::int,"
                f" count(*) FILTER (WHERE {client} AND application_name LIKE 'heimdall%')"
                " FROM pg_stat_activity"
            )
        ).one()
    return ConnectionUse(open=row[0], allowed=row[1], ours=row[2])


def _revision(connection: sa.Connection, schema: str) -> str | None:
    table = connection.execute(
        sa.text("SELECT to_regclass(:table)"), {"table": f'"{schema}".alembic_version'}
    ).scalar()
    if table is None:
        return None
    found = connection.execute(sa.text(f'SELECT version_num FROM "{schema}".alembic_version'))
    return found.scalar()


def known_revisions() -> list[str]:
    """This release's migrations, oldest first: the last is the one ``migrate`` brings to."""
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory(str(MIGRATIONS_DIR))
    return [script.revision for script in reversed(list(scripts.walk_revisions()))]
