"""The Celery worker: app factory, the per-process runtime, and the thin ``heimdall.locate`` task.

Each worker process creates its onnxruntime session and store connections once, after the
prefork fork (``worker_process_init``), never at import time.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

import celery.worker.consumer
from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown
from threadpoolctl import threadpool_limits

from inference_worker.serving import observability
from inference_worker.serving.dead_letters import dead_letter_step
from inference_worker.serving.jobs import JobServices, fail_job, run_job
from inference_worker.serving.models import ModelUnavailable, ServedModels
from inference_worker.serving.registry import CHAMPION
from inference_worker.settings import Settings
from inference_worker.storage.database import JobStore, create_engine
from inference_worker.storage.errors import TRANSIENT_ERRORS
from inference_worker.storage.redis_store import RedisStore, connect
from tasks.app import create_celery
from tasks.contract import TASK_NAME

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 2.0
HEARTBEAT_TTL_S = 10
T = TypeVar("T")


def retry_delay_s(retries: int) -> float:
    """Exponential backoff with full jitter, capped at half a minute."""
    return random.uniform(0.5, min(30.0, 2.0 ** (retries + 1)))


def with_store_retries(
    run: Callable[[], T], attempts: int, sleep: Callable[[float], None] = time.sleep
) -> T:
    """Call ``run``; on a transient store error wait (backoff with jitter) and call it again.

    The message stays in hand meanwhile, so nothing is lost if the process dies while waiting.

    Raises:
        The last transient error after ``attempts`` calls.
    """
    for attempt in range(attempts - 1):
        try:
            return run()
        except TRANSIENT_ERRORS as exc:
            delay = retry_delay_s(attempt)
            log.warning(
                "transient store error (attempt %d of %d), retrying in %.1f s: %s",
                attempt + 1,
                attempts,
                delay,
                exc,
            )
            sleep(delay)
    return run()


class ProcessRuntime:
    """What one worker process holds: the model session, the stores and its heartbeat."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.worker_id = ""
        self._services: JobServices | None = None
        self.served: ServedModels
        self._started_at = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def services(self) -> JobServices:
        with self._lock:
            if self._services is None:
                self._services = self._build()
            return self._services

    def start(self, **_: Any) -> None:
        self.services()

    def stop(self, **_: Any) -> None:
        self._stop.set()
        observability.mark_process_dead(os.getpid())
        if self._services is not None:
            try:
                self._services.redis.forget_worker(self.worker_id)
            except TRANSIENT_ERRORS:
                pass

    def _build(self) -> JobServices:
        settings = self.settings
        # One worker process is one unit of concurrency: keep numpy's BLAS single-threaded,
        # or concurrent processes oversubscribe the cores and small products slow down 30x.
        threadpool_limits(1)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        jobs = JobStore(
            create_engine(
                settings.database_url, settings.database_schema, pool_size=2, role="heimdall-worker"
            )
        )
        store = RedisStore(connect(settings.redis_url), settings.redis_prefix)
        self.served = ServedModels(settings, jobs, store)
        self.served.refresh()
        champion = self.served.by_alias[CHAMPION]
        services = JobServices(
            jobs=jobs,
            redis=store,
            model=champion.model,
            model_version_id=champion.model_version_id,
            result_ttl_s=settings.result_ttl_s,
            cache_ttl_s=settings.cache_ttl_s,
        )
        self._started_at = time.time()
        thread = threading.Thread(
            target=self._beat, args=(store,), name="heimdall-heartbeat", daemon=True
        )
        thread.start()
        return services

    def services_for(self, payload: object) -> tuple[JobServices, str | None]:
        """The services for one job, with the model it should run on (reloading first if asked).

        Returns the services and, when the job asked for a model nobody serves, the reason.
        """
        base = self.services()
        self.served.refresh()
        job_id = payload.get("job_id") if isinstance(payload, dict) else None
        requested = payload.get("model") if isinstance(payload, dict) else None
        try:
            loaded = self.served.choose(
                job_id if isinstance(job_id, str) else None,
                requested if isinstance(requested, str) else None,
            )
        except ModelUnavailable as exc:
            return base, str(exc)
        return replace(base, model=loaded.model, model_version_id=loaded.model_version_id), None

    def _info(self) -> dict[str, Any]:
        served = self.served.describe()
        champion = served["models"].get(CHAMPION, {})
        return {
            "worker_id": self.worker_id,
            "queue": self.settings.queue,
            "model_version": champion.get("model_version"),
            "model_sha256": champion.get("sha256"),
            "started_at": self._started_at,
            "seen_at": time.time(),
            **served,
        }

    def _beat(self, store: RedisStore) -> None:
        while not self._stop.is_set():
            try:
                self.served.refresh()  # idle processes follow a reload too
            except Exception as exc:  # the process keeps its models; the heartbeat says why
                log.error("reload failed: %s", exc)
            try:
                store.heartbeat(self.worker_id, self._info(), HEARTBEAT_TTL_S)
            except TRANSIENT_ERRORS as exc:
                log.warning("heartbeat to Redis failed: %s", exc)
            self._stop.wait(HEARTBEAT_INTERVAL_S)


class Consumer(celery.worker.consumer.Consumer):
    """Celery's consumer without native delayed delivery.

    Celery sets that up whenever it sees a quorum queue: 28 extra queues and exchanges on the
    broker, and a warning, since it does not work with direct exchanges. This service never
    publishes a task with a countdown or an ETA, so it has no use for them.
    """

    class Blueprint(celery.worker.consumer.Consumer.Blueprint):
        default_steps = [
            step
            for step in celery.worker.consumer.Consumer.Blueprint.default_steps
            if not step.endswith(":DelayedDelivery")
        ]


def create_worker_app(settings: Settings) -> Celery:
    """The worker's Celery app with the ``heimdall.locate`` task registered."""
    app = create_celery(settings.broker_url, settings.queue, delivery_limit=settings.max_deliveries)
    runtime = ProcessRuntime(settings)
    app.conf.heimdall_runtime = runtime
    app.conf.worker_consumer = f"{__name__}:Consumer"

    def attempt(payload: object, task_id: str | None) -> dict[str, Any]:
        services, unavailable = runtime.services_for(payload)
        if unavailable is not None:
            return fail_job(payload, services, unavailable, task_id).to_json()
        return run_job(payload, services, task_id).to_json()

    @app.task(name=TASK_NAME, bind=True, max_retries=None)
    def locate(self: Any, payload: object) -> dict[str, Any]:
        try:
            return with_store_retries(
                lambda: attempt(payload, self.request.id), settings.task_max_retries + 1
            )
        except TRANSIENT_ERRORS as exc:
            # A long outage: put a fresh copy of the message at the back of the queue (its
            # delivery count starts again, so an outage never dead-letters a job) and let the
            # worker take other work meanwhile.
            log.warning("stores still unavailable; job goes back to the queue: %s", exc)
            raise self.retry(exc=exc, countdown=0) from None
        except Exception as exc:  # a bug, not the input: record it rather than retry forever
            log.exception("job failed with an unexpected error")
            reason = f"internal error in the worker: {type(exc).__name__}: {exc}"
            # If even this cannot be recorded, the task raises: its message is rejected to the
            # dead-letter queue, whose consumer fails the job.
            return fail_job(payload, runtime.services(), reason, self.request.id).to_json()

    @functools.cache
    def main_process_stores() -> tuple[JobStore, RedisStore]:
        engine = create_engine(
            settings.database_url, settings.database_schema, pool_size=1, role="heimdall-worker"
        )
        return JobStore(engine), RedisStore(connect(settings.redis_url), settings.redis_prefix)

    app.steps["consumer"].add(
        dead_letter_step(
            settings.queue, settings.max_deliveries, main_process_stores, settings.result_ttl_s
        )
    )

    worker_process_init.connect(runtime.start, weak=False)
    worker_process_shutdown.connect(runtime.stop, weak=False)
    observability.connect_worker_signals()
    return app
