"""What one worker process holds: its model sessions, its store connections and its heartbeat.

Created once per process after the prefork fork (``worker_process_init``), never at import time.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import replace
from typing import Any

from threadpoolctl import threadpool_limits

from inference_worker.serving import observability
from inference_worker.serving.heartbeat import beat_until
from inference_worker.serving.jobs import JobServices
from inference_worker.serving.memory import retain_freed_memory
from inference_worker.serving.models import ModelUnavailable, ServedModels
from inference_worker.serving.registry import CHAMPION
from inference_worker.settings import Settings
from inference_worker.storage.database import JobStore
from inference_worker.storage.engine import WORKER_POOL, engine_for
from inference_worker.storage.errors import STORE_ERRORS
from inference_worker.storage.redis_store import (
    HEARTBEAT_INTERVAL_S,
    HEARTBEAT_TTL_S,
    RedisStore,
    connect,
)

log = logging.getLogger(__name__)


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
        try:
            self.services()
        except STORE_ERRORS as exc:  # built at the first batch instead, whose retries wait
            log.warning(
                "worker process started without its stores: %s: %s", type(exc).__name__, exc
            )

    def stop(self, **_: Any) -> None:
        self._stop.set()
        observability.mark_process_dead(os.getpid())
        if self._services is not None:
            try:
                self._services.redis.forget_worker(self.worker_id)
            except STORE_ERRORS:
                pass

    def _build(self) -> JobServices:
        settings = self.settings
        # One worker process is one unit of concurrency: keep numpy's BLAS single-threaded,
        # or concurrent processes oversubscribe the cores and small products slow down 30x.
        threadpool_limits(1)
        retain_freed_memory(settings.retain_freed_mb)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        jobs = JobStore(engine_for(settings, role="heimdall-worker", pool_size=WORKER_POOL))
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
            tdoa_max_receivers=settings.tdoa_max_receivers,
        )
        self._started_at = time.time()
        for target, args, name in (
            (self._beat, (store,), "heimdall-heartbeat"),
            (self._follow, (), "heimdall-reload"),
        ):
            threading.Thread(target=target, args=args, name=name, daemon=True).start()
        return services

    def services_for(
        self, payload: object, *, refresh: bool = True
    ) -> tuple[JobServices, str | None]:
        """The services for one job, with the model it should run on (reloading first if asked
        and ``refresh``: once a batch is enough).

        Returns the services and, when the job asked for a model nobody serves, the reason.
        """
        base = self.services()
        if refresh:
            self.served.refresh(before_job=True)
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
            "tdoa_max_receivers": self.settings.tdoa_max_receivers,
            "model_version": champion.get("model_version"),
            "model_sha256": champion.get("sha256"),
            "started_at": self._started_at,
            "seen_at": time.time(),
            **served,
        }

    def _follow(self) -> None:
        """Follow reloads in an idle process too. A thread of its own: a reload that takes
        longer than the heartbeat's lifetime (a large version downloaded, a registry that
        drops connections) held the heartbeat, and the process looked gone meanwhile."""
        while not self._stop.is_set():
            try:
                self.served.refresh()
            except Exception as exc:  # the process keeps its models; the heartbeat says why
                log.error("reload failed: %s", exc)
            self._stop.wait(HEARTBEAT_INTERVAL_S)

    def _beat(self, store: RedisStore) -> None:
        beat_until(
            self._stop,
            lambda: store.heartbeat(self.worker_id, self._info(), HEARTBEAT_TTL_S),
            HEARTBEAT_INTERVAL_S,
            log,
        )
