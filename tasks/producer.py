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

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from inference_worker.capture import (
    CaptureLimits,
    iq_digest,
    parse_capture_time,
    parse_job_id,
    parse_receivers,
    validate_iq,
)
from inference_worker.storage.redis_store import RedisStore, connect
from tasks.app import create_celery
from tasks.contract import TASK_NAME, LocateMessage, wait_until_final


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
    ) -> None:
        from inference_worker.settings import load_settings

        settings = load_settings()
        self.queue = queue or settings.queue
        self.blob_ttl_s = blob_ttl_s or settings.blob_ttl_s
        self.store = RedisStore(
            connect(redis_url or settings.redis_url), redis_prefix or settings.redis_prefix
        )
        self.celery = create_celery(
            broker_url or settings.broker_url, self.queue, delivery_limit=settings.max_deliveries
        )
        self.limits = limits or CaptureLimits(max_samples=settings.max_samples_per_receiver)

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
    ) -> str:
        """Validate and enqueue one ``(3, n)`` complex64 capture; returns its job id.

        ``tenant``, if given, makes the job readable over HTTP only by keys of that tenant.

        Raises:
            inference_worker.capture.CaptureError: the capture is invalid (nothing was sent).
        """
        iq = validate_iq(np.ascontiguousarray(iq), self.limits)
        when = (
            capture_time if isinstance(capture_time, datetime) else parse_capture_time(capture_time)
        )
        job_id = parse_job_id(job_id) or str(uuid.uuid4())
        key = self.store.blob_key(job_id)
        message = LocateMessage(
            job_id=job_id,
            blob_key=key,
            n_samples=int(iq.shape[1]),
            sample_rate_hz=float(sample_rate_hz),
            frequency_mhz=float(frequency_mhz),
            receivers=parse_receivers(list(receivers)),
            capture_time=when,
            iq_sha256=iq_digest(iq),
            submitted_at=datetime.now(UTC),
            batch_id=batch_id,
            tenant=tenant,
        )
        self.store.put_blob(key, iq.tobytes(), self.blob_ttl_s)
        self.celery.send_task(
            TASK_NAME, args=[message.model_dump(mode="json")], task_id=job_id, queue=self.queue
        )
        return job_id

    def result(self, job_id: str) -> dict[str, Any] | None:
        """The finished job, or ``None`` while it is not finished (or its result expired)."""
        return self.store.get_result(job_id)

    def wait(
        self, job_id: str, timeout_s: float = 60.0, interval_s: float = 0.05
    ) -> dict[str, Any]:
        """Block until the job is final; raises ``TimeoutError`` after ``timeout_s``."""
        return wait_until_final(lambda: self.result(job_id), job_id, timeout_s, interval_s)

    def close(self) -> None:
        self.store.client.close()
        self.celery.close()

    def __enter__(self) -> CaptureProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
