"""Infrastructure (open to all): health, the model's health across workers, Prometheus metrics
and the OpenAPI document."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from celery import Celery
from flask import Response, jsonify
from prometheus_client.core import GaugeMetricFamily

from api_shim.auth import Audience, current_principal
from api_shim.services import services
from inference_worker.core.contract import ModelError, load_metadata
from inference_worker.serving import observability
from inference_worker.serving.registry import (
    RegistryError,
    RegistryUnavailable,
    last_known_copy,
    serving_model_dir,
)
from inference_worker.settings import Settings
from inference_worker.storage.database_silence import answered_within
from inference_worker.storage.engine import connection_use
from inference_worker.storage.errors import TRANSIENT_ERRORS
from inference_worker.storage.maintenance import JobMaintenance
from inference_worker.storage.redis_silence import ping_within
from inference_worker.storage.redis_store import RedisStore
from inference_worker.urls import redact_secrets
from tasks.app import broker_alarm, dead_letter_queue_name
from tasks.probe import BrokerProbe

log = logging.getLogger(__name__)

OPENAPI_FILE = Path(__file__).resolve().parent / "openapi.json"
HEALTH_STORE_S = 2.0
"""How long a health check or a scrape waits for PostgreSQL (the job database's or a model
registry's) or for Redis's answer to PING (as for RabbitMQ): one that answers nothing costs a
load balancer's probe this, not the statement or the socket timeout."""


def create_blueprint() -> Audience:
    blueprint = Audience("infra", __name__, access="open")
    blueprint.add_url_rule("/health", view_func=health)
    blueprint.add_url_rule("/health/model", view_func=health_model)
    blueprint.add_url_rule("/metrics", view_func=metrics)
    blueprint.add_url_rule("/openapi.json", view_func=openapi)
    return blueprint


def serving_workers(settings: Settings, store: RedisStore) -> list[dict[str, Any]]:
    """The heartbeats of the worker processes serving this shim's queue."""
    return [w for w in store.workers() if w.get("queue") == settings.queue]


def worker_models(worker: dict[str, Any]) -> dict[str, Any]:
    keys = ("worker_id", "generation", "challenger_fraction", "models", "last_error", "seen_at")
    return {k: worker.get(k) for k in keys}


def health() -> tuple[Response, int]:
    shim = services()
    with answered_within(HEALTH_STORE_S):  # the job database's statements, a registry's
        checks = {
            "broker": timed_check(lambda: broker_takes_messages(shim.celery, shim.broker_probe)),
            "redis": timed_check(lambda: ping_within(shim.store.client, HEALTH_STORE_S)),
            "database": timed_check(shim.jobs.ping),
        }
        # Heartbeats are read from the Redis just asked: one that did not answer is not waited
        # on twice (a Redis that stopped answering cost /health two timeouts, 10 s).
        model = model_check(shim.settings, shim.store, redis_answers=checks["redis"]["ok"])
    stores_ok = all(c["ok"] for c in checks.values())
    status = "ok" if stores_ok and model["ok"] else ("degraded" if stores_ok else "unavailable")
    body = {"status": status, "checks": {**checks, "model": model}}
    return jsonify(for_whom(body, "status")), 200 if stores_ok else 503


def health_model() -> tuple[Response, int]:
    shim = services()
    try:
        generation, _ = shim.store.serving_state()
        workers = serving_workers(shim.settings, shim.store)
    except TRANSIENT_ERRORS as exc:  # a store down is this check's answer, not a 500
        problem = redact_secrets(f"{NO_HEARTBEATS}{type(exc).__name__}: {exc}")
        down = {"ok": False, "generation": None, "workers": [], "problems": [problem]}
        return jsonify(for_whom(down, "ok")), 503
    problems = [
        f"{w['worker_id']}: {w.get('last_error') or 'generation ' + str(w.get('generation'))}"
        for w in workers
        if w.get("last_error") or w.get("generation") != generation
    ]
    ok = bool(workers) and not problems
    body = {
        "ok": ok,
        "generation": generation,
        "workers": [worker_models(w) for w in workers],
        "problems": problems if workers else ["no worker is serving this queue"],
    }
    return jsonify(for_whom(body, "ok")), 200 if ok else 503


def for_whom(body: dict[str, Any], summary: str) -> dict[str, Any]:
    """The whole health body for a caller with a key (or when no keys are configured); only its
    ``summary`` field for an anonymous caller: worker ids, process ids, model hashes and service
    latencies are not for everyone."""
    if services().settings.api_keys and current_principal() is None:
        return {summary: body[summary]}
    return body


def openapi() -> Response:
    return Response(OPENAPI_FILE.read_bytes(), mimetype="application/json")


def metrics() -> Response:
    shim = services()
    settings = shim.settings
    collectors = (
        QueueDepth(shim.broker_probe, settings.queue),
        DatabaseGauges(shim.maintenance, settings.stuck_after_s),
    )
    body, content_type = observability.render(collectors)
    return Response(body, content_type=content_type)


def broker_takes_messages(celery: Celery, probe: BrokerProbe) -> None:
    """RabbitMQ answers and takes publishes. It tells of a memory or disk alarm only a
    connection that publishes, so a health check publishes (two empty messages no queue takes,
    on the connection the process keeps for its checks) while this process knows of no alarm:
    a load balancer learns of one before a submission meets it, and the submissions that follow
    are refused at once. During an alarm the alarm's probe is asked instead: health checks also
    learn when it is over."""
    alarm = broker_alarm(celery)
    if alarm.reason is None:
        reason = probe.blocked_reason()
        if reason is not None:
            alarm.heard_blocked(reason)
    alarm.check()


NO_HEARTBEATS = "cannot read worker heartbeats: "


def timed_check(probe: Callable[[], Any]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        probe()
    except Exception as exc:  # a health check reports any failure, whatever its type
        return {"ok": False, "error": redact_secrets(f"{type(exc).__name__}: {exc}")}
    return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1e3, 2)}


def model_check(
    settings: Settings, store: RedisStore, *, redis_answers: bool = True
) -> dict[str, Any]:
    """The configured model is intact and at least one worker on this queue has it loaded
    (the workers' heartbeats are not read when Redis has just not answered).

    While the registry does not answer the check fails naming it, and still lists the workers
    serving (from the copies on their hosts) and the version this host last knew.
    """
    outage: str | None = None
    try:
        model_dir = serving_model_dir(settings)
    except RegistryUnavailable as exc:
        outage = str(exc)
        try:
            model_dir = last_known_copy(settings, settings.model_alias, exc)[1]
        except (ModelError, RegistryError):
            return {"ok": False, "error": outage, "workers": []}
    except (ModelError, RegistryError) as exc:
        return {"ok": False, "error": str(exc), "workers": []}
    try:  # a registry's copy was verified as it was found
        metadata = load_metadata(model_dir, verify=settings.model_source != "registry")
        if not redis_answers:
            return {"ok": False, "error": NO_HEARTBEATS + "Redis did not answer", "workers": []}
        workers = serving_workers(settings, store)
    except ModelError as exc:
        return {"ok": False, "error": str(exc), "workers": []}
    except TRANSIENT_ERRORS as exc:
        return {
            "ok": False,
            "error": redact_secrets(f"{NO_HEARTBEATS}{exc}"),
            "workers": [],
        }
    body: dict[str, Any] = {
        "ok": bool(workers) and outage is None,
        "configured_version": metadata.version,
        "workers": workers,
    }
    if outage is not None:
        body["error"] = outage
    elif not workers:
        body["error"] = "no worker is serving this queue"
    return body


class QueueDepth:
    """Collector of the ready messages and consumers of the inference queue and its dead-letter
    queue, asked of RabbitMQ at scrape time."""

    def __init__(self, probe: BrokerProbe, queue: str) -> None:
        self.probe, self.queue = probe, queue

    def collect(self) -> Iterator[GaugeMetricFamily]:
        messages = GaugeMetricFamily(
            "heimdall_queue_messages",
            "Messages waiting in the inference queue and its dead-letter queue.",
            labels=["queue"],
        )
        consumers = GaugeMetricFamily(
            "heimdall_queue_consumers", "Consumers of each queue.", labels=["queue"]
        )
        try:  # a queue not declared yet (no worker has started) is left out
            depths = self.probe.queue_depths((self.queue, dead_letter_queue_name(self.queue)))
        except Exception as exc:  # a scrape never fails because the broker is down
            log.debug("queue depth unavailable: %s", redact_secrets(str(exc)))
            return
        for name, (ready, consuming) in depths.items():
            messages.add_metric([name], ready)
            consumers.add_metric([name], consuming)
        yield messages
        yield consumers


class DatabaseGauges:
    """Collector of what PostgreSQL says at scrape time: the jobs not final ``stuck_after_s``
    after submission (an index on unfinished jobs keeps it cheap), and the server's open
    connections (all of them, and heimdall's) against how many it allows — past them it refuses
    the next process's. One attempt a scrape: a database down costs it one connect timeout."""

    def __init__(self, maintenance: JobMaintenance, stuck_after_s: float) -> None:
        self.maintenance, self.stuck_after_s = maintenance, stuck_after_s

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            with answered_within(HEALTH_STORE_S):
                stuck = self.maintenance.count_not_final(self.stuck_after_s)
                use = connection_use(self.maintenance.engine)
        except TRANSIENT_ERRORS as exc:  # a scrape never fails because the database is down
            log.debug("database gauges unavailable: %s", redact_secrets(str(exc)))
            return
        yield GaugeMetricFamily(
            "heimdall_jobs_stuck",
            f"Jobs not final {self.stuck_after_s:g} s after submission (HEIMDALL_STUCK_AFTER_S).",
            value=stuck,
        )
        connections = GaugeMetricFamily(
            "heimdall_database_connections",
            "Client connections the PostgreSQL server has open: all, and heimdall's processes'.",
            labels=["owner"],
        )
        connections.add_metric(["all"], use.open)
        connections.add_metric(["heimdall"], use.ours)
        yield connections
        yield GaugeMetricFamily(
            "heimdall_database_connections_allowed",
            "Client connections the PostgreSQL server allows (max_connections less those "
            "reserved for superusers).",
            value=use.allowed,
        )
