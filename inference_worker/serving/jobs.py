"""One inference job, from task message to recorded result: the plain function the task wraps.

``run_job`` takes its services explicitly, so tests call it directly with the real stores and a
real model, and the Celery task in :mod:`inference_worker.serving.worker` is only a thin wrapper.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from inference_worker.core.capture import JOB_ID_PATTERN
from inference_worker.serving.locating import (
    BadJob,
    Predictor,
    decode_blob,
    decode_recordings,
    locate,
    locate_tdoa,
    tdoa_fit,
)
from inference_worker.storage.database import JobStore
from inference_worker.storage.errors import STORE_FULL_ERRORS
from inference_worker.storage.redis_store import RedisStore
from inference_worker.storage.statuses import FINAL_STATUSES
from inference_worker.storage.views import job_view
from tasks.contract import LocateMessage, MessageError, capture_fingerprint, read_message
from tasks.outbox import record_job, start_job

log = logging.getLogger(__name__)

TDOA_VERSION = "tdoa-1"
"""What a TDoA job records as its model version: the estimator's, not a registry model's."""


@dataclass
class JobServices:
    jobs: JobStore
    redis: RedisStore
    model: Predictor
    model_version_id: int | None
    result_ttl_s: int
    cache_ttl_s: int
    tdoa_max_receivers: int = 32
    """Most receivers a TDoA job may name (``HEIMDALL_TDOA_MAX_RECEIVERS``, as producers check):
    a message past it, from a producer that does not check, fails at once."""


@dataclass(frozen=True)
class JobOutcome:
    job_id: str | None
    status: str
    """succeeded, failed, duplicate (already final: nothing done), or reused_id (the job is of
    another capture: nothing done, :func:`left_out`)."""
    cache_hit: bool = False
    error: str | None = None
    model_version: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    method: str = "model"
    tdoa_fit: str | None = None
    """How a located TDoA job's delays fitted (:func:`locating.tdoa_fit`)."""

    def to_json(self) -> dict[str, Any]:
        """What the task returns: Celery hooks read it to record metrics."""
        return {
            "job_id": self.job_id,
            "status": self.status,
            "cache_hit": self.cache_hit,
            "error": self.error,
            "model_version": self.model_version,
            "timings": self.timings,
            "method": self.method,
            "tdoa_fit": self.tdoa_fit,
        }


def served_version(message: LocateMessage, model: Predictor) -> str:
    """The version a job records: the estimator's for TDoA, the serving model's otherwise."""
    return TDOA_VERSION if message.method == "tdoa" else model.version


def parse_message(payload: object) -> LocateMessage:
    """The task message, or :class:`BadJob` saying what is wrong with it."""
    try:
        return read_message(payload)
    except MessageError as exc:
        raise BadJob(str(exc)) from None


def queue_wait_ms(row: Mapping[str, Any]) -> float:
    """How long a started job waited, from its creation to its start, both on the database's
    clock (the hosts' clocks may differ: a shim's a few milliseconds ahead made waits negative)."""
    return float((row["started_at"] - row["created_at"]).total_seconds() * 1e3)


def message_job_id(payload: object, task_id: str | None) -> str | None:
    """The job a message is about: its ``job_id``, else the task id it travelled under (producers
    publish each job as the task of the same id), so even an unreadable message fails its job."""
    job_id = payload.get("job_id") if isinstance(payload, dict) else None
    return job_id if isinstance(job_id, str) and job_id else task_id


def run_job(payload: object, services: JobServices, task_id: str | None = None) -> JobOutcome:
    """Turn one task message into a recorded result (or a recorded failure).

    Safe to run twice for the same job: a job already final is left untouched, and the
    conditional updates in :class:`JobStore` record one result however often it runs.

    Raises:
        One of :data:`~inference_worker.storage.errors.TRANSIENT_ERRORS` when a store is
        unreachable; the caller retries.
    """
    started = time.perf_counter()
    job_id = message_job_id(payload, task_id)
    model = services.model
    try:
        message = parse_message(payload)
    except BadJob as exc:
        return _reject(services, job_id, str(exc))
    tdoa = message.method == "tdoa"
    version = served_version(message, model)

    row = start_job(services.jobs, message)
    if row is None:
        return left_out(services, message)
    waited_ms = queue_wait_ms(row)

    cache_key = services.redis.cache_key(
        version, model.metadata.sha256, capture_fingerprint(message)
    )
    use_cache = services.cache_ttl_s > 0 and not tdoa
    cached: dict[str, Any] | None
    try:
        if tdoa and len(message.receivers) > services.tdoa_max_receivers:
            raise BadJob(
                f"{len(message.receivers)} receivers; a worker locates at most "
                f"{services.tdoa_max_receivers} (HEIMDALL_TDOA_MAX_RECEIVERS)"
            )
        t0 = time.perf_counter()
        blob, cached = services.redis.fetch_capture(
            message.blob_key, cache_key if use_cache else None
        )
        stage_timings: dict[str, float] = {}
        if tdoa:
            files = decode_recordings(blob, message)
            fetch_ms = (time.perf_counter() - t0) * 1e3
            result, stage_timings, picture = locate_tdoa(files, message)
            if_room(lambda: services.redis.put_map(message.job_id, picture, services.result_ttl_s))
        else:
            iq = decode_blob(blob, message)
            fetch_ms = (time.perf_counter() - t0) * 1e3
            if cached is None:
                result, stage_timings = locate(iq, message, model)
            else:
                result = cached
        cache_hit = cached is not None
    except BadJob as exc:
        outcome = fail_started(services, message.job_id, str(exc), version, message.method)
        services.redis.delete_blob(message.blob_key)
        return outcome

    timings = {
        "queue_wait_ms": waited_ms,
        "fetch_ms": fetch_ms,
        **stage_timings,
        "worker_total_ms": (time.perf_counter() - started) * 1e3,
    }
    timings = {k: round(v, 3) for k, v in timings.items()}
    final = services.jobs.succeed(
        message.job_id,
        result=result,
        model_version=version,
        model_version_id=None if tdoa else services.model_version_id,
        cache_hit=cache_hit,
        timings=timings,
    )
    if final is None:
        log.info("job %s finished elsewhere first; this result is not recorded", message.job_id)
        return JobOutcome(message.job_id, "duplicate", method=message.method)
    services.redis.finish(
        message.blob_key,
        (message.job_id, job_view(final), services.result_ttl_s),
        None if cache_hit or not use_cache else (cache_key, result, services.cache_ttl_s),
    )
    log.info(
        "job %s succeeded: %.5f, %.5f (%s, cache hit: %s)",
        message.job_id,
        result["lat"],
        result["lon"],
        message.method,
        cache_hit,
    )
    return JobOutcome(
        message.job_id,
        "succeeded",
        cache_hit=cache_hit,
        model_version=version,
        timings=timings,
        method=message.method,
        tdoa_fit=tdoa_fit(result) if tdoa else None,
    )


def fail_job(
    payload: object, services: JobServices, reason: str, task_id: str | None = None
) -> JobOutcome:
    """Record a job as failed without running it (e.g. it asked for a model nobody serves)."""
    try:
        message = parse_message(payload)
    except BadJob as exc:
        return _reject(services, message_job_id(payload, task_id), str(exc))
    if services.jobs.get(message.job_id) is None:
        record_job(services.jobs, message)
    version = served_version(message, services.model)
    outcome = fail_started(services, message.job_id, reason, version, message.method)
    services.redis.delete_blob(message.blob_key)
    return outcome


def if_room(write: Callable[[], None]) -> None:
    """Write to a Redis cache (results, the result cache) unless Redis is full: PostgreSQL
    holds the record, and a full Redis must not fail a job that is done."""
    try:
        write()
    except STORE_FULL_ERRORS as exc:
        log.warning("Redis is full; a cached copy is skipped: %s", exc)


def _reject(services: JobServices, job_id: str | None, reason: str) -> JobOutcome:
    """An unusable message: record its job as failed (creating the row if a producer sent it)."""
    log.warning("job %s rejected: %s", job_id, reason)
    if job_id is not None and JOB_ID_PATTERN.match(job_id):
        final = services.jobs.record_rejected(job_id, reason)
        if final is not None:
            if_room(
                lambda: services.redis.put_result(job_id, job_view(final), services.result_ttl_s)
            )
    return JobOutcome(job_id, "failed", error=reason)


def fail_started(
    services: JobServices,
    job_id: str | None,
    reason: str,
    model_version: str,
    method: str = "model",
) -> JobOutcome:
    log.warning("job %s failed: %s", job_id, reason)
    if job_id is not None:
        final = services.jobs.fail(job_id, reason, model_version=model_version)
        if final is not None:
            if_room(
                lambda: services.redis.put_result(job_id, job_view(final), services.result_ttl_s)
            )
    return JobOutcome(job_id, "failed", error=reason, model_version=model_version, method=method)


def left_out(services: JobServices, message: LocateMessage) -> JobOutcome:
    """The outcome of a message whose job the start statement left as it is: a redelivery of a
    job already final (``duplicate``), or a message of another capture under the job's id
    (``reused_id``: a producer reused the id; logged as an error). The row is the job's and
    stays so: its own message locates its own capture, stored under a key of its digest, and
    no job records the result of a capture that is not its own. The left-out capture is
    deleted where its key is of its own digest (no message of the job's capture names that
    key); an earlier release's key, the job id alone, may be the job's own and stays.

    A final job's view is written to Redis again, its capture dropped and waiters woken: the
    delivery that recorded its result may not have reached Redis after (Redis did not answer,
    or PostgreSQL ran a statement the worker had given up on when it woke). Redis then held the
    note of a queued job for the result's lifetime, and every wait for the job lasted its
    whole length (217 of 25 895 jobs, after PostgreSQL went silent for 20 s under load)."""
    row = services.jobs.get(message.job_id)
    if row is not None and row["iq_sha256"] != message.iq_sha256:
        log.error(
            "job %s is of the capture with sha256 %s, this message of %s: its producer reused "
            "the job id for another capture; this message is left out",
            message.job_id,
            row["iq_sha256"][:12],
            message.iq_sha256[:12],
        )
        if message.blob_key == services.redis.blob_key(message.job_id, message.iq_sha256):
            services.redis.delete_blob(message.blob_key)
        return JobOutcome(message.job_id, "reused_id", method=message.method)
    if row is not None and row["status"] in FINAL_STATUSES:
        copy = (message.job_id, job_view(row), services.result_ttl_s)
        if_room(lambda: services.redis.finish(message.blob_key, copy, None))
    log.info("job %s already final; redelivery ignored", message.job_id)
    return JobOutcome(message.job_id, "duplicate", method=message.method)
