"""Accepting a capture: validate, record the job, store the IQ (claim check), publish the task."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import amqp.exceptions
import kombu.exceptions
import numpy as np

from inference_worker.capture import CaptureMeta, iq_digest
from inference_worker.jobs import TRANSIENT_ERRORS
from inference_worker.storage.database import JobStore, NewJob
from inference_worker.storage.redis_store import RedisStore
from tasks.contract import LocateMessage

log = logging.getLogger(__name__)

Publish = Callable[[LocateMessage], None]
UNAVAILABLE_ERRORS = (
    *TRANSIENT_ERRORS,
    kombu.exceptions.KombuError,
    amqp.exceptions.AMQPError,
    OSError,
)


class ServiceUnavailable(RuntimeError):
    """A store or the broker cannot take the job now; nothing was accepted (HTTP 503)."""


class JobConflict(RuntimeError):
    """A client job id was reused for a different capture (HTTP 409)."""


@dataclass(frozen=True)
class Accepted:
    job_id: str
    status: str
    created: bool
    """False when the client job id existed already and the earlier job is returned."""


class Submitter:
    def __init__(
        self, jobs: JobStore, store: RedisStore, publish: Publish, blob_ttl_s: int
    ) -> None:
        self.jobs = jobs
        self.store = store
        self.publish = publish
        self.blob_ttl_s = blob_ttl_s

    def submit(
        self,
        iq: np.ndarray,
        meta: CaptureMeta,
        job_id: str | None,
        batch_id: str | None = None,
        model: str | None = None,
        tenant: str | None = None,
    ) -> Accepted:
        """Accept a validated capture. Once this returns, the job is queued and will finish.

        Raises:
            JobConflict: ``job_id`` exists with different IQ.
            ServiceUnavailable: a store or the broker is down; nothing is left behind.
        """
        job_id = job_id or str(uuid.uuid4())
        digest = iq_digest(iq)
        new_job = NewJob(
            job_id=job_id,
            capture_time=meta.capture_time,
            frequency_mhz=meta.frequency_mhz,
            sample_rate_hz=meta.sample_rate_hz,
            n_samples=int(iq.shape[1]),
            receivers=list(meta.receivers),
            iq_sha256=digest,
            batch_id=batch_id,
            tenant=tenant,
        )
        try:
            row, created = self.jobs.create(new_job)
        except TRANSIENT_ERRORS as exc:
            log.error("database unavailable while accepting a job: %s", exc)
            raise ServiceUnavailable("the job database is unavailable; retry later") from None
        if not created:
            if row["tenant"] != tenant:  # say nothing about another tenant's job
                raise JobConflict(f"job_id {job_id!r} is taken; choose another")
            if row["iq_sha256"] != digest:
                raise JobConflict(f"job_id {job_id!r} was already used for a different capture")
            return Accepted(job_id, row["status"], created=False)

        blob_key = self.store.blob_key(job_id)
        message = LocateMessage(
            job_id=job_id,
            blob_key=blob_key,
            n_samples=new_job.n_samples,
            sample_rate_hz=meta.sample_rate_hz,
            frequency_mhz=meta.frequency_mhz,
            receivers=meta.receivers,
            capture_time=meta.capture_time,
            iq_sha256=digest,
            batch_id=batch_id,
            model=model,
            tenant=tenant,
        )
        try:
            self.store.put_blob(blob_key, np.ascontiguousarray(iq).tobytes(), self.blob_ttl_s)
            self.publish(message)
        except UNAVAILABLE_ERRORS as exc:
            self._withdraw(job_id, blob_key)
            which = "Redis" if isinstance(exc, TRANSIENT_ERRORS) else "the message broker"
            log.error("could not accept job %s, %s unavailable: %r", job_id, which, exc)
            raise ServiceUnavailable(f"{which} is unavailable; retry later") from None
        return Accepted(job_id, "queued", created=True)

    def _withdraw(self, job_id: str, blob_key: str) -> None:
        for undo in (
            lambda: self.store.delete_blob(blob_key),
            lambda: self.jobs.delete_queued(job_id),
        ):
            try:
                undo()
            except Exception as exc:  # best effort: the original failure is what the client hears
                log.warning("could not withdraw job %s: %r", job_id, exc)


def describe_accepted(accepted: Accepted, status_url: str) -> dict[str, Any]:
    return {
        "job_id": accepted.job_id,
        "status": accepted.status,
        "status_url": status_url,
        "created": accepted.created,
    }
