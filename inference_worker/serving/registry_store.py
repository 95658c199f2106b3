"""Reaching the model registry's store: its outages, its first set-up, MLflow's waits.

MLflow's client retries a store that does not answer for minutes and sets a new store's tables
up without a lock; this module bounds the one and serialises the other, and tells a store that
stopped answering (:class:`RegistryUnavailable`) from a request the registry refuses
(:class:`RegistryError`). :mod:`inference_worker.serving.registry` is its user; the ``check``
command sets MLflow's waits shorter, and child processes are started without the ones a parent
chose (:func:`without_applied_defaults`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import sqlite3
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path

from inference_worker.storage.database_silence import answered_within
from inference_worker.urls import redact_secrets


class RegistryError(RuntimeError):
    """The registry cannot do what was asked (unknown version or alias, unreachable store)."""


class RegistryUnavailable(RegistryError):
    """The registry's store (its database or MLflow server) does not answer: try again later.
    Nothing about the request is wrong."""


PROBE_TIMEOUT_S = 3.0
"""How long the registry's store may take to accept a connection before it counts as down."""
REPLY_S = 10.0
"""How long a statement to a PostgreSQL store is waited on (as a request to an MLflow server,
``MLFLOW_HTTP_REQUEST_TIMEOUT``): one that stopped answering held a health check without end."""

MLFLOW_DEFAULTS = {
    # MLflow's own defaults retry a server that does not answer 7 times with a backoff factor
    # of 2 and wait 120 s for each reply: `models list` against a stopped MLflow server took
    # more than five minutes to fail, and a shim request waited as long.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    # A server's runs are announced on stdout ("View run ... at: http://..."): the commands
    # say what they registered themselves.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
"""MLflow's settings this service chooses (environment variables); an operator's setting wins."""

MLFLOW_QUICK = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"}
"""In place of :data:`MLFLOW_DEFAULTS`' waits, for a command that must answer within seconds
whatever is down (``check``): a server that answers ``/health`` but hangs on its API held it
37 s with the defaults."""


@contextlib.contextmanager
def store_set_up(uri: str, *, hold: bool = True) -> Iterator[None]:
    """Reach the registry's store and, with ``hold``, hold it for this process while MLflow sets
    its tables up.

    Raises :class:`RegistryUnavailable` unless a database or server accepts a connection within
    :data:`PROBE_TIMEOUT_S` (MLflow itself retries a database ten times over ~100 s before its
    first statement, and a server longer still). MLflow creates and upgrades its tables when a
    client first opens a store, with no lock of its own: processes starting together on a new
    store (a worker and a shim) ran its migrations at once, and all but one failed ("table
    already exists", "duplicate key"). A file lock beside a SQLite store, or a PostgreSQL
    advisory lock, makes them take turns; the later ones find the tables made.
    """
    import sqlalchemy as sa

    shown = redact_secrets(uri)
    if uri.startswith(("http://", "https://")):  # the server sets its own store up
        try:
            urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S).close()
        except urllib.error.HTTPError:
            pass  # it answers (a proxy may want credentials for /health: MLflow will send them)
        except OSError as exc:
            reason = getattr(exc, "reason", exc)
            raise RegistryUnavailable(
                f"the model registry at {shown} does not answer: {reason}"
            ) from None
        yield
    elif not hold:  # the engine MLflow keeps gives up on a connection after PROBE_TIMEOUT_S
        yield
    elif uri.startswith("sqlite:") and sa.make_url(uri).database not in (None, "", ":memory:"):
        database = Path(str(sa.make_url(uri).database))
        database.parent.mkdir(parents=True, exist_ok=True)
        _probe_sqlite(database, shown)
        with open(f"{database}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
            yield
    elif uri.startswith("postgresql"):
        engine = sa.create_engine(
            uri,
            connect_args={"connect_timeout": int(PROBE_TIMEOUT_S)},
            poolclass=sa.pool.NullPool,
            isolation_level="AUTOCOMMIT",
        )
        try:
            connection = engine.connect()
        except sa.exc.DBAPIError as exc:
            engine.dispose()
            reason = str(exc.orig).strip().splitlines()[0]
            raise RegistryUnavailable(
                f"the model registry at {shown} does not answer: {reason}"
            ) from None
        try:
            if hold:  # a session lock: its connection's end (this process's, too) releases it
                connection.execute(sa.text(f"SET lock_timeout = '{SET_UP_WAIT_S}s'"))
                try:
                    connection.execute(
                        sa.text("SELECT pg_advisory_lock(:id)"), {"id": SET_UP_LOCK_ID}
                    )
                except sa.exc.DBAPIError:
                    raise RegistryUnavailable(
                        f"the model registry at {shown} does not answer: another process has "
                        f"been setting it up for {SET_UP_WAIT_S} s"
                    ) from None
            yield
        finally:
            connection.close()
            engine.dispose()
    else:
        yield


def _probe_sqlite(database: Path, shown: str) -> None:
    """A SQLite store MLflow could not open (a folder in its place, a file that is not a
    database, no permission) was retried for ~100 s like a database server."""
    try:
        probe = sqlite3.connect(database, timeout=PROBE_TIMEOUT_S)
        try:
            probe.execute("PRAGMA schema_version").fetchone()
        finally:
            probe.close()
    except sqlite3.Error as exc:
        raise RegistryUnavailable(f"the model registry at {shown} does not answer: {exc}") from None


_SET_UP: set[str] = set()
"""Stores this process has opened once: MLflow set their tables up then."""
SET_UP_LOCK_ID = zlib.crc32(b"heimdall-model-registry-set-up")
"""The PostgreSQL advisory lock processes take turns on while MLflow sets a store up."""
SET_UP_WAIT_S = 60
"""Longest a process waits for its turn (MLflow's migrations of a new store take seconds)."""


def is_store_failure(exc: Exception) -> bool:
    """Whether an error of MLflow's is its store not answering (rather than the request)."""
    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException

    if isinstance(exc, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
        return True
    if not isinstance(exc, MlflowException):
        return False
    # MLflow's database stores wrap a connection's failure as TEMPORARILY_UNAVAILABLE; its REST
    # client wraps one that failed or timed out in a plain MlflowException worded so, and a
    # gateway's 502-504 (the server behind it is down) comes with its status.
    return exc.error_code == "TEMPORARILY_UNAVAILABLE" or _REST_FAILURE.match(str(exc)) is not None


_REST_FAILURE = re.compile(
    r"API request to \S+ failed with (exception|timeout exception|error code 50[234]) "
)


_REST_CAUSE = re.compile(
    r"API request to (?P<url>[^?\s]+)\S* failed with (?:timeout )?exception .*"
    r"\(Caused by \w+\((?P<cause>.*)\)\)\s*$"
)


def short_rest_reason(reason: str) -> str:
    """MLflow's words for a request that failed, without urllib3's pool, query string and
    exception names: "API request to URL failed: Read timed out. (read timeout=3)"."""
    found = _REST_CAUSE.match(reason)
    if found is None:
        return reason
    cause = found["cause"].strip("'\"")
    cause = re.split(r"(?:\)|>): ", cause)[-1]  # after "HTTPConnectionPool(...)" or "<... at 0x…>"
    return f"API request to {found['url']} failed: {cause}"


_APPLIED: dict[str, str] = {}
"""The variables :func:`apply_mlflow_defaults` set in this process: not the operator's."""


def apply_mlflow_defaults(*, quick: bool = False) -> None:
    """Set :data:`MLFLOW_DEFAULTS` (with ``quick``, :data:`MLFLOW_QUICK` first) in this
    process's environment where the operator has not."""
    for variable, value in {**MLFLOW_DEFAULTS, **(MLFLOW_QUICK if quick else {})}.items():
        if variable not in os.environ:
            os.environ[variable] = _APPLIED[variable] = value


def without_applied_defaults(env: dict[str, str]) -> dict[str, str]:
    """``env`` less the MLflow settings this process chose for itself, for a child process,
    which chooses its own: inherited, they would pass for the operator's."""
    return {name: value for name, value in env.items() if _APPLIED.get(name) != value}


def store_uri(uri: str) -> str:
    """``uri`` as MLflow should open it: a PostgreSQL store gives up on a connection after
    :data:`PROBE_TIMEOUT_S` (MLflow keeps its engine for the process's life, unprobed)."""
    if not uri.startswith("postgresql"):
        return uri
    import sqlalchemy as sa

    url = sa.make_url(uri)
    if "connect_timeout" in url.query:
        return uri
    timeout = str(int(PROBE_TIMEOUT_S))
    return url.update_query_dict({"connect_timeout": timeout}).render_as_string(hide_password=False)


@contextlib.contextmanager
def opening(uri: str) -> Iterator[bool]:
    """Reach the store for a client to open it; holds the set-up turn on this process's first
    open of ``uri`` (yielded: True), when MLflow sets the store's tables up."""
    first = uri not in _SET_UP
    with store_set_up(uri, hold=first):
        yield first
    _SET_UP.add(uri)


@contextlib.contextmanager
def store_failures(shown_uri: str, *, limited: bool = True) -> Iterator[None]:
    """MLflow's errors of a store that stopped answering as :class:`RegistryUnavailable`, and an
    answer that is not MLflow's as :class:`RegistryError`. With ``limited``, a PostgreSQL store
    that answers nothing is given up on after :data:`REPLY_S` (not when MLflow sets its tables
    up: a migration may take longer)."""
    try:
        with answered_within(REPLY_S) if limited else contextlib.nullcontext():
            yield
    except RegistryError:
        raise
    except Exception as exc:
        reason = redact_secrets(str(getattr(exc, "orig", None) or exc).strip().splitlines()[0])
        reason = short_rest_reason(reason)
        if is_store_failure(exc):
            raise RegistryUnavailable(
                f"the model registry at {shown_uri} does not answer: {reason}"
            ) from None
        if reason.startswith("API request to "):  # something answered, but not as MLflow
            raise RegistryError(f"the model registry at {shown_uri}: {reason}") from None
        raise
