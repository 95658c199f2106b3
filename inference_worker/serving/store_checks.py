"""The stores' part of ``heimdall-inference check`` (:mod:`deployment_check`): RabbitMQ's
queues as this release declares them and what waits in them, a Redis that keeps what it is given
and does not evict it, and a job schema of this release's migrations with nothing stuck."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import amqp.exceptions
import kombu
import redis
import sqlalchemy.exc

from inference_worker.settings import Settings
from inference_worker.storage.errors import first_line
from inference_worker.storage.reachability import (
    eviction_warning,
    persistence_warning,
    probe_client,
    unanswered,
    unbounded_warning,
)
from inference_worker.urls import redact_secrets, redact_url

if TYPE_CHECKING:
    from inference_worker.storage.engine import ConnectionUse

Level = Literal["ok", "warn", "fail"]
FULL_FRACTION = 0.8
"""Redis this full of its ``maxmemory`` is worth a warning: a full one refuses submissions;
so is a PostgreSQL with this share of the connections it allows open."""
ALARM_PROBE_TIMEOUT_S = 2.0
"""How long the broker has to confirm the probe's message or say that it blocks it."""


@dataclass(frozen=True)
class Finding:
    area: str
    """What was looked at: rabbitmq, redis, postgresql, model, workers, host."""
    level: Level
    message: str


def guarded(area: str, check: Callable[[], list[Finding]]) -> list[Finding]:
    """A check's findings; a check that could not finish is one failure saying why."""
    try:
        return check()
    except Exception as exc:  # whatever stopped it is what the operator needs to read
        return [Finding(area, "fail", redact_secrets(first_line(exc)))]


# --- RabbitMQ ---------------------------------------------------------------------------------
def check_broker(settings: Settings) -> list[Finding]:
    from tasks.app import dead_letter_queue_name, inference_queue

    where = redact_url(settings.broker_url)
    with kombu.Connection(settings.broker_url, connect_timeout=2) as connection:
        try:
            connection.ensure_connection(max_retries=1, timeout=2)
        except Exception as exc:  # kombu raises what the transport raised
            reason = unanswered("RabbitMQ", settings.broker_url, exc)
            return [Finding("rabbitmq", "fail", reason)]
        queue = settings.queue
        blocked = _alarm_findings(settings.broker_url, where)
        counts = _queue_counts(connection, queue)
        if counts is None:
            return blocked + [
                Finding(
                    "rabbitmq",
                    "warn",
                    f"{where}: queue {queue!r} is not declared yet: a worker or the api "
                    "declares it at start (`heimdall-inference migrate` does too)",
                )
            ]
        findings = [*blocked, _queue_finding(where, queue, *counts)]
        wanted = inference_queue(queue, settings.max_deliveries)
        with connection.clone() as own:  # a refused declaration closes its channel
            try:
                wanted(own.channel()).queue_declare()  # same arguments: changes nothing
            except amqp.exceptions.PreconditionFailed as exc:
                findings.append(
                    Finding(
                        "rabbitmq",
                        "fail",
                        f"queue {queue!r} has other arguments than this release declares "
                        f"(an older classic queue, or a delivery limit other than "
                        f"HEIMDALL_MAX_DELIVERIES={settings.max_deliveries}): {exc.reply_text}. "
                        "A worker's start replaces it once it is empty (README, upgrading)",
                    )
                )
        dead = dead_letter_queue_name(queue)
        dead_counts = _queue_counts(connection, dead)
        if dead_counts is not None and dead_counts[0]:
            findings.append(
                Finding(
                    "rabbitmq",
                    "warn",
                    f"{dead_counts[0]} message(s) in the dead-letter queue {dead!r}: workers "
                    "record each as a failed job when they can (README, when the dead-letter "
                    "queue fills)",
                )
            )
        return findings


def _alarm_findings(broker_url: str, where: str) -> list[Finding]:
    """A memory or disk alarm in effect (a failure), or a broker too slow to tell (a warning)."""
    from tasks.probe import blocked_reason

    try:
        reason = blocked_reason(broker_url, timeout=ALARM_PROBE_TIMEOUT_S)
    except TimeoutError:
        return [
            Finding(
                "rabbitmq",
                "warn",
                f"{where} did not confirm a message in {ALARM_PROBE_TIMEOUT_S:g} s: it is "
                "overloaded, and submissions wait as long",
            )
        ]
    if reason is None:
        return []
    return [
        Finding(
            "rabbitmq",
            "fail",
            f"{where} blocks publishing ({reason}): a memory or disk alarm; every submission "
            "is refused (503) until it clears: give the broker memory or disk, or let workers "
            "drain its queues",
        )
    ]


def _queue_counts(connection: kombu.Connection, name: str) -> tuple[int, int] | None:
    """(messages ready, consumers) of queue ``name``; None when it is not declared."""
    with connection.clone() as own:
        try:
            _, messages, consumers = own.channel().queue_declare(name, passive=True)
        except amqp.exceptions.NotFound:
            return None
        return messages, consumers


def _queue_finding(where: str, queue: str, messages: int, consumers: int) -> Finding:
    text = f"{where}: queue {queue!r}: {messages} waiting, {consumers} consumer(s)"
    if consumers == 0:
        return Finding("rabbitmq", "warn", f"{text}: no worker takes its jobs")
    return Finding("rabbitmq", "ok", text)


# --- Redis ------------------------------------------------------------------------------------
def check_redis(settings: Settings) -> list[Finding]:
    from inference_worker.storage.errors import PersistenceError

    where = redact_url(settings.redis_url)
    client = probe_client(settings.redis_url)
    try:
        try:
            client.ping()
        except PersistenceError as exc:
            return [Finding("redis", "fail", f"{where} refuses writes: {exc}")]
        except redis.exceptions.RedisError as exc:
            return [Finding("redis", "fail", unanswered("Redis", settings.redis_url, exc))]
        try:
            config = {
                **client.config_get("maxmemory*"),
                **client.config_get("appendonly"),
                **client.config_get("save"),
            }
        except redis.exceptions.ResponseError:  # CONFIG renamed or refused (a managed Redis)
            return [
                Finding(
                    "redis",
                    "warn",
                    f"{where} answers; its configuration cannot be read (CONFIG refused): make "
                    "sure it keeps an append-only file and does not evict keys",
                )
            ]
        used = int(client.info("memory").get("used_memory", 0))
    finally:
        client.close()
    findings = [
        Finding("redis", "warn", f"{where} {problem}")
        for problem in (
            persistence_warning(config),
            eviction_warning(config),
            unbounded_warning(config),
        )
        if problem
    ]
    limit = int(config.get("maxmemory") or 0)
    if limit and used >= FULL_FRACTION * limit:
        findings.append(
            Finding(
                "redis",
                "warn",
                f"{where} holds {used / limit:.0%} of its maxmemory: when full, submissions "
                "are refused (503) until workers consume what waits there",
            )
        )
    if not findings:
        findings.append(Finding("redis", "ok", f"{where} keeps each write and never evicts"))
    return findings


# --- PostgreSQL -------------------------------------------------------------------------------
def check_database(settings: Settings) -> list[Finding]:
    from inference_worker.storage.engine import (
        UnknownMigration,
        connection_need,
        connection_use,
        engine_for,
        known_revisions,
        schema_revision,
    )
    from inference_worker.storage.maintenance import JobMaintenance

    schema = settings.database_schema
    engine = engine_for(settings, role="heimdall-check", pool_size=1)
    try:
        try:
            revision = schema_revision(engine, schema)
        except sqlalchemy.exc.OperationalError as exc:
            reason = unanswered("PostgreSQL", settings.database_url, exc)
            return [Finding("postgresql", "fail", reason)]
        known = known_revisions()
        if revision is None:
            return [
                Finding(
                    "postgresql",
                    "fail",
                    f"the job schema {schema!r} has no tables yet: run `heimdall-inference "
                    "migrate` (a worker or the api does at start)",
                )
            ]
        if revision not in known:
            return [Finding("postgresql", "fail", str(UnknownMigration(schema, revision)))]
        findings = []
        use = connection_use(engine)
        if revision != known[-1]:
            findings.append(
                Finding(
                    "postgresql",
                    "warn",
                    f"the job schema {schema!r} is at migration {revision}, this release's is "
                    f"{known[-1]}: run `heimdall-inference migrate` (a worker or the api does "
                    "at start)",
                )
            )
        else:
            findings.append(
                Finding(
                    "postgresql",
                    "ok",
                    f"{redact_url(settings.database_url)}: the job schema {schema!r} is at "
                    f"migration {revision}; {use.open} of the {use.allowed} connections it "
                    f"allows are open, this host's settings keep up to "
                    f"{connection_need(settings).total}",
                )
            )
            stuck = JobMaintenance(engine).count_not_final(settings.stuck_after_s)
            if stuck:
                findings.append(
                    Finding(
                        "postgresql",
                        "warn",
                        f"{stuck} job(s) not final {settings.stuck_after_s:g} s after "
                        "submission: `heimdall-inference jobs stuck` says what is known of each",
                    )
                )
        return findings + _connection_findings(use, settings)
    finally:
        engine.dispose()


def _connection_findings(use: ConnectionUse, settings: Settings) -> list[Finding]:
    from inference_worker.storage.engine import UPKEEP_POOL, WORKER_POOL, connection_need, shim_pool

    findings = []
    need = connection_need(settings)
    others = use.open - use.ours
    room = use.allowed - others
    if need.total > room:
        findings.append(
            Finding(
                "postgresql",
                "warn",
                f"this host's settings let heimdall's processes keep up to {need.total} "
                f"connections to {redact_url(settings.database_url)} (the shim's "
                f"{settings.api_workers} × {shim_pool(settings)}: HEIMDALL_API_WORKERS × "
                f"(HEIMDALL_API_THREADS + 1); the worker's {UPKEEP_POOL} + "
                f"{settings.worker_concurrency} × {WORKER_POOL}: its main process and "
                f"HEIMDALL_WORKER_CONCURRENCY pool processes), more than the {room} the server "
                f"leaves them (it allows {use.allowed}, other clients hold {others}): under "
                "load a process's next connection is refused (too many clients) and its "
                "submissions or jobs wait; raise max_connections, or lower "
                "HEIMDALL_API_WORKERS or HEIMDALL_API_THREADS",
            )
        )
    if use.open >= FULL_FRACTION * use.allowed:
        findings.append(
            Finding(
                "postgresql",
                "warn",
                f"{redact_url(settings.database_url)} has {use.open} of the {use.allowed} "
                f"connections it allows open ({use.ours} of them heimdall's processes'): when "
                "none is left, the next process's connection is refused (too many clients) and "
                "its submissions or jobs wait; raise max_connections, or run fewer shim "
                "processes or threads (HEIMDALL_API_WORKERS, HEIMDALL_API_THREADS: each shim "
                "process keeps up to threads + 1)",
            )
        )
    return findings
