"""What the shim's views use: the settings, the stores, the intake path and the served model.

Built once by :func:`api_shim.app.create_app`; connections open lazily, on the first request
that needs them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from celery import Celery
from flask import current_app

from api_shim.model_info import ModelInfo
from api_shim.work_slots import WorkSlots
from inference_worker.core.contract import ModelError, ModelSummary, load_metadata
from inference_worker.core.features import load_signal_maths
from inference_worker.serving.registry import (
    RegistryError,
    RegistryUnavailable,
    last_known_copy,
    open_registry,
    serving_model_dir,
)
from inference_worker.settings import Settings
from inference_worker.storage.database import JobStore
from inference_worker.storage.engine import engine_for, shim_pool
from inference_worker.storage.maintenance import JobMaintenance
from inference_worker.storage.notifications import FinishedJobs
from inference_worker.storage.redis_store import RedisStore, connect
from tasks.app import create_celery, publisher
from tasks.intake import Intake, ModelRequestError, ResolveModel
from tasks.outbox import DeferredMarks
from tasks.probe import BrokerProbe
from tasks.served import ServedModelCache

ALIAS_RECHECK_S = 5.0
"""How long an alias a submission named is taken as still there without asking the registry
again (two registry reads a submission otherwise)."""
BROKER_PROBE_TIMEOUT_S = 2.0
"""How long RabbitMQ has to answer a health check (confirm its message, or say it blocks it)
or a metrics scrape's question."""


@dataclass(frozen=True)
class ShimServices:
    settings: Settings
    jobs: JobStore
    maintenance: JobMaintenance
    store: RedisStore
    celery: Celery
    served: ServedModelCache
    intake: Intake
    finished: FinishedJobs
    model_info: ModelInfo
    work_slots: WorkSlots
    broker_probe: BrokerProbe
    """The connection the health checks and metrics scrapes ask RabbitMQ on."""

    @property
    def model(self) -> ModelSummary:
        """The champion submissions are checked against (as the last reload announced it)."""
        summary = self.served.current()
        assert summary is not None  # the cache falls back to the model found at start
        return summary


def build_services(settings: Settings) -> ShimServices:
    load_signal_maths()  # no first fast submission waits for it (a no-op after gunicorn's fork)
    # Only until Redis holds the announced champion: a registry down at start leaves the
    # copy of what it named when this host last read it.
    started_with = ModelSummary.of(
        load_metadata(serving_model_dir(settings, fall_back=True), verify=False)
    )
    celery = create_celery(
        settings.broker_url, settings.queue, delivery_limit=settings.max_deliveries
    )
    # A connection for each request thread and one for the thread that marks jobs published:
    # with fewer, the pool's overflow connections were closed on return and opened again for
    # the next request (a new PostgreSQL backend every few jobs under load).
    engine = engine_for(settings, role="heimdall-api", pool_size=shim_pool(settings))
    jobs = JobStore(engine)
    store = RedisStore(connect(settings.redis_url), settings.redis_prefix)
    served = ServedModelCache(store, fallback=started_with)
    intake = Intake(
        settings,
        store,
        publisher(celery, settings.queue, settings.publish_confirm_timeout_s),
        served,
        jobs=jobs,
        mark_published=DeferredMarks(jobs),
        resolve_model=model_resolver(settings, served),
    )
    return ShimServices(
        settings,
        jobs,
        JobMaintenance(engine),
        store,
        celery,
        served,
        intake,
        FinishedJobs(store, settings.api_max_waits),
        ModelInfo(settings, store),
        WorkSlots(settings.api_threads),
        BrokerProbe(settings.broker_url, timeout=BROKER_PROBE_TIMEOUT_S),
    )


def model_resolver(
    settings: Settings, served: ServedModelCache, clock: Callable[[], float] = time.monotonic
) -> ResolveModel:
    """Refuse a requested model that the registry (or the served folder) does not have.

    A version number the registry once answered for is not asked again (a version is not
    renumbered; opening the registry cost a submission ~8 ms), nor an alias for
    ``ALIAS_RECHECK_S`` (an alias removed meanwhile fails its jobs at the worker, naming it);
    while the registry does not answer, a version or alias with a verified copy on this host is
    accepted, as a worker would serve it.
    """
    known: set[str] = set()
    aliases_seen: dict[str, float] = {}

    def resolve(reference: str) -> None:
        if settings.model_source == "registry":
            seen = aliases_seen.get(reference)
            if reference in known or (seen is not None and clock() - seen < ALIAS_RECHECK_S):
                return
            try:
                open_registry(settings).resolve(reference)
            except RegistryUnavailable as outage:
                try:
                    last_known_copy(settings, reference, outage)
                except ModelError:
                    raise outage from None  # a 503: the submission may be sent again
            except RegistryError as exc:
                raise ModelRequestError("unknown_model", str(exc)) from None
            else:
                if reference.isdigit():
                    known.add(reference)
                else:
                    aliases_seen[reference] = clock()
            return
        summary = served.current()
        version = summary.version if summary else None
        if reference not in ("champion", version):
            raise ModelRequestError("unknown_model", f"this service serves only {version!r}")

    return resolve


def services() -> ShimServices:
    """The services of the app serving the current request."""
    found: ShimServices = current_app.extensions["heimdall"]
    return found
