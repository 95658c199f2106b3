"""Quick checks that the services the worker and shim need answer, with messages for people."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

import amqp.exceptions
import kombu
import redis
import sqlalchemy as sa

from inference_worker.settings import Settings
from inference_worker.storage.errors import PersistenceError, first_line
from inference_worker.storage.redis_store import ReplyParser
from inference_worker.urls import redact_url

log = logging.getLogger(__name__)


def probe_broker(broker_url: str) -> None:
    with kombu.Connection(broker_url, connect_timeout=2) as connection:
        connection.ensure_connection(max_retries=1, timeout=2)


def probe_redis(redis_url: str) -> None:
    """Redis answers. One that cannot save to disk answers ``MISCONF`` even to a ping: it is
    up, and refuses writes until a snapshot succeeds, so a process may start and wait it out as
    it would while running (the shim answers 503, workers retry)."""
    client = probe_client(redis_url)
    try:
        client.ping()
    except PersistenceError as exc:
        log.warning("Redis at %s refuses writes for now: %s", redact_url(redis_url), exc)
    try:
        config = client.config_get("maxmemory*")
    except redis.exceptions.ResponseError:  # CONFIG renamed or not allowed (managed Redis)
        config = {}
    finally:
        client.close()
    warning = eviction_warning(config)
    if warning:
        log.warning("Redis at %s %s", redact_url(redis_url), warning)


def probe_client(redis_url: str) -> redis.Redis:
    """A client for a quick look at Redis: 2 s to connect and to answer, ``MISCONF`` raised as
    :class:`PersistenceError`."""
    return redis.Redis.from_url(
        redis_url, socket_connect_timeout=2, socket_timeout=2, parser_class=ReplyParser
    )


def eviction_warning(config: Mapping[str | None, str | None]) -> str | None:
    """What is wrong with a Redis whose ``CONFIG GET maxmemory*`` is ``config``: one that evicts
    keys when full can evict a waiting capture, and its job then fails for want of it (a full
    Redis must refuse new work instead). None when it cannot evict."""
    policy = config.get("maxmemory-policy") or "noeviction"
    if policy == "noeviction" or int(config.get("maxmemory") or 0) == 0:
        return None
    return (
        f"evicts keys when full (maxmemory-policy {policy}): a waiting capture may be evicted "
        "and its job fail; run it with maxmemory-policy noeviction"
    )


def unbounded_warning(config: Mapping[str | None, str | None]) -> str | None:
    """What is wrong with a Redis whose ``CONFIG GET maxmemory*`` is ``config`` and that has no
    ``maxmemory``: it never refuses a submission, so a backlog grows until the machine runs out
    of memory and the kernel stops Redis, every waiting capture with it. None with a bound."""
    if int(config.get("maxmemory") or 0):
        return None
    return (
        "has no maxmemory: a backlog grows until the machine runs out of memory and the kernel "
        "stops Redis, losing every waiting capture; set maxmemory (sized for the backlog to "
        "ride out) with maxmemory-policy noeviction, so that a full Redis refuses submissions "
        "(503) instead"
    )


def persistence_warning(config: Mapping[str | None, str | None]) -> str | None:
    """What a Redis whose ``CONFIG GET appendonly`` and ``CONFIG GET save`` are ``config`` loses
    when it stops: the captures waiting for a worker (their jobs then fail). None when it keeps
    each write (an append-only file)."""
    if (config.get("appendonly") or "no") == "yes":
        return None
    save = (config.get("save") or "").strip()
    if save:
        return (
            f"keeps only snapshots (save {save}): captures accepted since the last one are "
            "lost when it stops, and their jobs fail; run it with appendonly yes"
        )
    return (
        "keeps nothing on disk (appendonly no, no snapshots): every waiting capture is lost "
        "when it restarts, and its job fails; run it with appendonly yes on a volume"
    )


def probe_database(database_url: str) -> None:
    engine = sa.create_engine(
        database_url, connect_args={"connect_timeout": 2}, poolclass=sa.pool.NullPool
    )
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    finally:
        engine.dispose()


SERVICES = ("RabbitMQ", "Redis", "PostgreSQL")

_PG_REFUSALS = (
    "password authentication failed",
    "no password supplied",
    "does not exist",  # the database or the role
    "no pg_hba.conf entry",
    "permission denied for database",
    "is not permitted to log in",
)
"""What PostgreSQL says, at connection, of a refusal that waiting does not end (libpq gives no
SQLSTATE for it: the text is all there is; a server that says it in another language is waited
for as a silence)."""


class Refused(str):
    """Why a service that answered refused this one: credentials, a database or virtual host it
    does not have, a permission. Waiting does not change it, unlike a silence."""


def refusal_remedy(name: str, exc: BaseException) -> str | None:
    """What to change when ``exc`` is ``name``'s refusal of this service's connection; None when
    it is a silence, a restart or anything else that may pass."""
    if isinstance(exc, amqp.exceptions.AccessRefused):
        return "check the user and password in HEIMDALL_BROKER_URL"
    if isinstance(exc, amqp.exceptions.NotAllowed):
        return "the virtual host in HEIMDALL_BROKER_URL must exist and let its user in"
    if isinstance(exc, redis.exceptions.AuthenticationError | redis.exceptions.NoPermissionError):
        return "check the user and password in HEIMDALL_REDIS_URL"
    if isinstance(exc, redis.exceptions.ResponseError) and "DB index" in str(exc):
        return "choose a database number the server has in HEIMDALL_REDIS_URL"
    reason = first_line(exc)
    if name == "PostgreSQL" and any(phrase in reason for phrase in _PG_REFUSALS):
        return "check the role, password and database in HEIMDALL_DATABASE_URL"
    return None


def unanswered(name: str, url: str, exc: BaseException) -> str:
    """Why ``name`` at ``url`` did not serve this service, from the URL on: a :class:`Refused`
    with what to change, or a silence."""
    remedy = refusal_remedy(name, exc)
    if remedy:
        return Refused(f"{redact_url(url)} refused: {first_line(exc)} ({remedy})")
    return f"{redact_url(url)} is not reachable: {first_line(exc)}"


def unreachable_services(settings: Settings, names: Iterable[str] = SERVICES) -> dict[str, str]:
    """Name -> why (:func:`unanswered`), for each of ``names`` (of :data:`SERVICES`) that does
    not answer or refuses this service."""
    probes: dict[str, tuple[Callable[[str], None], str]] = {
        "RabbitMQ": (probe_broker, settings.broker_url),
        "Redis": (probe_redis, settings.redis_url),
        "PostgreSQL": (probe_database, settings.database_url),
    }
    failures = {}
    for name in names:
        probe, url = probes[name]
        try:
            probe(url)
        except Exception as exc:  # any failure means "not served"; the message says why
            reason = unanswered(name, url, exc)
            failures[name] = type(reason)(f"{name} at {reason}")  # a refusal stays one
    return failures
