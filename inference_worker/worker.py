"""The Celery worker: app factory, the per-process runtime, and the thin ``heimdall.locate`` task.

Each worker process creates its onnxruntime session and store connections once, after the
prefork fork (``worker_process_init``), never at import time.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from typing import Any

from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown
from threadpoolctl import threadpool_limits

from inference_worker import observability
from inference_worker.jobs import TRANSIENT_ERRORS, JobServices, run_job
from inference_worker.model import LocalizationModel
from inference_worker.registry import serving_model_dir
from inference_worker.settings import Settings
from inference_worker.storage.database import JobStore, create_engine
from inference_worker.storage.redis_store import RedisStore, connect
from tasks.app import create_celery
from tasks.contract import TASK_NAME

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 10.0
HEARTBEAT_TTL_S = 30


def retry_delay_s(retries: int) -> float:
    """Exponential backoff with full jitter, capped at a minute."""
    return random.uniform(0.5, min(60.0, 2.0 ** (retries + 1)))


class ProcessRuntime:
    """What one worker process holds: the model session, the stores and its heartbeat."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.worker_id = ""
        self._services: JobServices | None = None
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
        model_dir = serving_model_dir(settings)
        model = LocalizationModel(
            model_dir,
            intra_op_threads=settings.onnx_intra_op_threads,
            inter_op_threads=settings.onnx_inter_op_threads,
        )
        jobs = JobStore(create_engine(settings.database_url, settings.database_schema, pool_size=2))
        meta = model.metadata
        model_version_id = jobs.register_model(
            name=meta.name,
            version=meta.version,
            onnx_path=str(model_dir / "model.onnx"),
            sha256=meta.sha256,
            metrics=meta.metrics,
        )
        store = RedisStore(connect(settings.redis_url), settings.redis_prefix)
        services = JobServices(
            jobs=jobs,
            redis=store,
            model=model,
            model_version_id=model_version_id,
            result_ttl_s=settings.result_ttl_s,
            cache_ttl_s=settings.cache_ttl_s,
        )
        info = {
            "worker_id": self.worker_id,
            "queue": settings.queue,
            "model_name": meta.name,
            "model_version": meta.version,
            "model_sha256": meta.sha256,
            "model_load_s": round(model.load_seconds, 4),
            "model_warmup_s": round(model.warmup_seconds, 4),
            "started_at": time.time(),
        }
        thread = threading.Thread(
            target=self._beat, args=(store, info), name="heimdall-heartbeat", daemon=True
        )
        thread.start()
        return services

    def _beat(self, store: RedisStore, info: dict[str, Any]) -> None:
        while not self._stop.is_set():
            try:
                store.heartbeat(self.worker_id, {**info, "seen_at": time.time()}, HEARTBEAT_TTL_S)
            except TRANSIENT_ERRORS as exc:
                log.warning("heartbeat to Redis failed: %s", exc)
            self._stop.wait(HEARTBEAT_INTERVAL_S)


def create_worker_app(settings: Settings) -> Celery:
    """The worker's Celery app with the ``heimdall.locate`` task registered."""
    app = create_celery(settings.broker_url, settings.queue)
    runtime = ProcessRuntime(settings)
    app.conf.heimdall_runtime = runtime

    @app.task(name=TASK_NAME, bind=True, max_retries=settings.task_max_retries)
    def locate(self: Any, payload: object) -> dict[str, Any]:
        try:
            return run_job(payload, runtime.services()).to_json()
        except TRANSIENT_ERRORS as exc:
            log.warning(
                "transient store error (attempt %d of %d): %s",
                self.request.retries + 1,
                self.max_retries + 1,
                exc,
            )
            raise self.retry(exc=exc, countdown=retry_delay_s(self.request.retries)) from None

    worker_process_init.connect(runtime.start, weak=False)
    worker_process_shutdown.connect(runtime.stop, weak=False)
    observability.connect_worker_signals()
    return app
