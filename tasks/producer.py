"""Enqueue captures straight onto RabbitMQ, without HTTP (for the acquisition service).

    from tasks.producer import CaptureProducer

    producer = CaptureProducer()  # HEIMDALL_* settings, or pass URLs
    job_id = producer.submit(iq, sample_rate_hz=12_000, frequency_mhz=145.5,
                             receivers=["torino", "montanaro", "giaveno"])
    result = producer.wait(job_id, timeout_s=30)  # the job as GET /jobs/<id> shows it

The IQ goes to Redis (claim check) and a JSON task message to the queue, with publisher
confirms; the worker records the job in PostgreSQL when it takes it. Nothing here loads a model.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np

from inference_worker.core.capture import CaptureLimits
from inference_worker.settings import Settings, load_settings
from inference_worker.storage.notifications import FinishedJobs
from inference_worker.storage.redis_store import RedisStore, connect
from tasks.app import create_celery, publisher
from tasks.contract import wait_until_final
from tasks.intake import Intake
from tasks.served import ServedModelCache


def _iso(capture_time: datetime | str | None) -> str | None:
    return capture_time.isoformat() if isinstance(capture_time, datetime) else capture_time


class CaptureProducer:
    def __init__(
        self,
        broker_url: str | None = None,
        redis_url: str | None = None,
        *,
        queue: str | None = None,
        redis_prefix: str | None = None,
        blob_ttl_s: int | None = None,
        limits: CaptureLimits | None = None,
        settings: Settings | None = None,
    ) -> None:
        """Settings from ``HEIMDALL_*`` (or ``settings``), the arguments given overriding them."""
        overrides: dict[str, Any] = {
            "broker_url": broker_url,
            "redis_url": redis_url,
            "queue": queue,
            "redis_prefix": redis_prefix,
            "blob_ttl_s": blob_ttl_s,
        }
        overrides = {k: v for k, v in overrides.items() if v is not None}
        settings = settings.model_copy(update=overrides) if settings else load_settings(**overrides)
        self.queue = settings.queue
        self.store = RedisStore(connect(settings.redis_url), settings.redis_prefix)
        self.celery = create_celery(
            settings.broker_url, self.queue, delivery_limit=settings.max_deliveries
        )
        self.finished = FinishedJobs(self.store)
        self.intake = Intake(
            settings,
            self.store,
            publisher(self.celery, self.queue, settings.publish_confirm_timeout_s),
            ServedModelCache(self.store),
            limits=limits,
        )

    def submit(
        self,
        iq: np.ndarray,
        *,
        sample_rate_hz: float,
        frequency_mhz: float,
        receivers: Sequence[str],
        capture_time: datetime | str | None = None,
        job_id: str | None = None,
        batch_id: str | None = None,
        tenant: str | None = None,
        model: str | None = None,
    ) -> str:
        """Validate and enqueue one ``(3, n)`` complex64 capture; returns its job id.

        The checks are the shim's (:class:`tasks.intake.Intake`): sample-rate and length bounds
        from the settings and the served model, the model's receivers. ``tenant``, if given,
        makes the job readable over HTTP only by keys of that tenant; ``model`` names a registry
        version or alias instead of the champion/challenger split.

        Raises:
            inference_worker.core.capture.CaptureError: the capture is invalid, or the
                ``batch_id`` or ``tenant`` (letters, digits, "._:-"; nothing sent).
            tasks.intake.ServiceUnavailable: Redis or RabbitMQ is down or refusing work
                (nothing accepted; a task RabbitMQ may have had all the same — read before a
                memory or disk alarm blocked publishing, or sent before the broker stopped
                answering — still arrives, its capture kept for it: submit again with the same
                ``job_id``).
        """
        fields = {
            "sample_rate_hz": sample_rate_hz,
            "frequency_mhz": frequency_mhz,
            "receivers": list(receivers),
            "capture_time": _iso(capture_time),
            "job_id": job_id,
            "model": model,
        }
        capture = self.intake.check(np.asarray(iq), fields)
        return self.intake.accept(capture, batch_id=batch_id, tenant=tenant).job_id

    def submit_tdoa(
        self,
        files: Sequence[tuple[str, bytes]],
        *,
        receivers: Sequence[Mapping[str, Any]],
        frequency_mhz: float,
        capture_time: datetime | str | None = None,
        job_id: str | None = None,
        tenant: str | None = None,
        expect_emitter: str = "anywhere",
        propagation: str = "ground",
    ) -> str:
        """Validate and enqueue a set to locate by time differences of arrival: one KiwiSDR IQ
        WAV file per receiver in ``files``, as ``(file name, bytes)`` (the name may be empty; a
        kiwirecorder name is checked against ``frequency_mhz``), and ``receivers`` in that order
        (``{"id", "lat", "lon", "height_m"?}``); returns the job id. ``expect_emitter``:
        ``among_receivers`` when the emitter is expected inside the receivers' hull (of two
        places that explain the delays alike, the one among them becomes the estimate).
        ``propagation``: ``skywave`` to locate with paths by one hop off an ionospheric layer
        (as at HF beyond ~100 km) rather than along the ground.

        The checks are the shim's for a multipart TDoA submission: every file read, its GPS
        time usable, a common span of ``HEIMDALL_TDOA_MIN_OVERLAP_S``, 3 to
        ``HEIMDALL_TDOA_MAX_RECEIVERS`` receivers, at most ``HEIMDALL_MAX_BODY_BYTES`` in all.

        Raises:
            inference_worker.core.capture.CaptureError: the set is refused, naming the receiver
                (nothing sent).
            tasks.intake.ServiceUnavailable: Redis or RabbitMQ is down or refusing work
                (nothing accepted; a task RabbitMQ may have had all the same — read before a
                memory or disk alarm blocked publishing, or sent before the broker stopped
                answering — still arrives, its capture kept for it: submit again with the same
                ``job_id``).
        """
        fields = {
            "receivers": [dict(r) for r in receivers],
            "frequency_mhz": frequency_mhz,
            "capture_time": _iso(capture_time),
            "job_id": job_id,
            "expect_emitter": expect_emitter,
            "propagation": propagation,
        }
        names = [name for name, _ in files]
        job = self.intake.check_tdoa([data for _, data in files], names, fields)
        return self.intake.accept(job, tenant=tenant).job_id

    def result(self, job_id: str) -> dict[str, Any] | None:
        """The finished job, or ``None`` while it is not finished (or its result expired)."""
        return self.store.get_result(job_id)

    def wait(self, job_id: str, timeout_s: float = 60.0) -> dict[str, Any]:
        """Block until the job is final, woken by the worker that finishes it (no polling);
        raises ``TimeoutError`` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s

        def fetch() -> dict[str, Any] | None:
            view = self.result(job_id)
            if view is None:
                left = max(0.0, min(5.0, deadline - time.monotonic()))
                self.finished.wait(job_id, left, lambda: self.result(job_id) is not None)
                view = self.result(job_id)
            return view

        return wait_until_final(fetch, job_id, timeout_s, interval_s=0.0)

    def close(self) -> None:
        self.store.client.close()
        self.celery.close()

    def __enter__(self) -> CaptureProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
