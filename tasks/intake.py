"""Accepting a capture: the one intake path of the HTTP shim and the producer client.

Both run the same checks (limits from the settings and from the served model), compute the same
digest and build the task message the same way, and the job row is copied from that message by
:func:`new_job`, the only place a capture's fields become a row.

Who writes the job row: the shim, before it publishes, so that a poll right after its 202 finds
the job; for a message that reached the queue any other way (the producer client talks to no
database), the worker or the dead-letter consumer that first sees the message
(:func:`record_job`). Either way the job is created when the message says it was submitted,
unless that lies ahead of the database's clock. A capture the serving model has located already (the
result cache) is never published: the shim writes its row final at once
(``JobStore.create_answered``).
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, NoReturn

import amqp.exceptions
import numpy as np
import redis.exceptions
from kombu.exceptions import KombuError

from inference_worker.core.capture import (
    CaptureError,
    CaptureLimits,
    CaptureTooLarge,
    parse_job_id,
    parse_meta,
    validate_iq,
)
from inference_worker.core.features import min_samples_at
from inference_worker.core.tdoa_capture import TdoaLimits, check_tdoa
from inference_worker.settings import Settings
from inference_worker.storage.database import JobStore
from inference_worker.storage.errors import STORE_ERRORS, TRANSIENT_ERRORS, describe_unavailable
from inference_worker.storage.redis_store import RedisStore
from inference_worker.storage.statuses import FINAL_STATUSES
from tasks.alarm import BrokerBlocked
from tasks.answers import CachedAnswer, announce_answered, cached_answer
from tasks.captures import Capture, TdoaJob, build_message, capture_limits
from tasks.contract import LocateMessage
from tasks.outbox import asked_otherwise, new_job, stored_message
from tasks.publish_failures import UNCONFIRMED, describe_broker_refusal, may_have_reached
from tasks.served import ServedModelCache

log = logging.getLogger(__name__)

Publish = Callable[[LocateMessage], None]
MarkPublished = Callable[[str], None]
"""Records that RabbitMQ confirmed a job's message (at once, or batched: ``DeferredMarks``)."""
ResolveModel = Callable[[str], None]
"""Checks that a requested model (registry version or alias) is served; raises
:class:`ModelRequestError`."""

MODEL_REF_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
UNAVAILABLE_ERRORS = (*STORE_ERRORS, KombuError, amqp.exceptions.AMQPError, OSError)
"""What a submission meets when a store or the broker is down: nothing is accepted (503), but
a task the broker may have had all the same (:func:`~tasks.publish_failures.may_have_reached`)."""


class ModelRequestError(CaptureError):
    """The model a submission asks for is malformed (``invalid_model``) or not served
    (``unknown_model``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ServiceUnavailable(RuntimeError):
    """A store or the broker cannot take the job now; nothing was accepted (HTTP 503)."""


class JobConflict(RuntimeError):
    """A client job id was reused for a different capture, or for the same one asking otherwise
    (HTTP 409)."""


@dataclass(frozen=True)
class Accepted:
    job_id: str
    status: str
    created: bool
    """False when the client job id existed already and the earlier job is returned."""

    def describe(self, status_url: str) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "status": self.status,
            "status_url": status_url,
            "created": self.created,
        }


def parse_model_request(value: object) -> str | None:
    """A registry version number or alias a client asks for instead of the A/B split."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not MODEL_REF_PATTERN.match(value):
        raise ModelRequestError("invalid_model", "model must be a registry version number or alias")
    return value


class Intake:
    """Validate and accept captures: the same checks and the same records for every caller.

    With a ``jobs`` store (the shim) the job row is written before the task is published; without
    one (the producer client) the worker writes it from the message.
    """

    def __init__(
        self,
        settings: Settings,
        store: RedisStore,
        publish: Publish,
        served: ServedModelCache,
        *,
        jobs: JobStore | None = None,
        mark_published: MarkPublished | None = None,
        resolve_model: ResolveModel | None = None,
        limits: CaptureLimits | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.publish = publish
        self.served = served
        self.jobs = jobs
        self.mark_published = mark_published or (jobs.mark_published if jobs else None)
        self.resolve_model = resolve_model
        self.fixed_limits = limits

    def limits(self) -> CaptureLimits:
        return self.fixed_limits or capture_limits(self.settings, self.served.current())

    def check(
        self, iq: np.ndarray, fields: Mapping[str, Any], look_up_model: bool = True
    ) -> Capture:
        """Check a decoded capture and its fields (as JSON or a query string gives them); a
        named model is looked up only when ``look_up_model`` (it may ask the registry).

        Raises:
            CaptureTooLarge: longer than the service accepts.
            CaptureError: anything else wrong; the text says what.
        """
        limits = self.limits()
        model = self.served.current()
        job_id = parse_job_id(fields.get("job_id"))
        meta = parse_meta(dict(fields), limits, model.receiver_ids if model else None)
        if model is not None:  # a fast rate is decimated first, which needs a few more samples
            shortest = min_samples_at(
                meta.sample_rate_hz, model.min_samples, model.bandwidth_hz, model.follow_carrier_hz
            )
            limits = replace(limits, min_samples=max(limits.min_samples, shortest))
        iq = validate_iq(iq, limits)
        requested = parse_model_request(fields.get("model"))
        if requested is not None and look_up_model and self.resolve_model is not None:
            self.resolve_model(requested)
        return Capture(iq=iq, meta=meta, job_id=job_id, model=requested)

    def check_tdoa(
        self, files: Sequence[bytes], names: Sequence[str], fields: Mapping[str, Any]
    ) -> TdoaJob:
        """Check a TDoA submission: one KiwiSDR IQ WAV file per receiver and their positions.

        Raises:
            CaptureTooLarge: the files add up to more than ``HEIMDALL_MAX_BODY_BYTES``.
            CaptureError: what is wrong, naming the receiver.
        """
        job_id = parse_job_id(fields.get("job_id"))
        size = sum(len(data) for data in files)
        if size > self.settings.max_body_bytes:  # the shim's body bound, for producers too
            raise CaptureTooLarge(
                f"the recordings add up to {size / 2**20:.1f} MiB; one job takes at most "
                f"{self.settings.max_body_bytes / 2**20:g} MiB (HEIMDALL_MAX_BODY_BYTES)"
            )
        limits = TdoaLimits(
            max_receivers=self.settings.tdoa_max_receivers,
            min_overlap_s=self.settings.tdoa_min_overlap_s,
        )
        return TdoaJob(check_tdoa(files, names, fields, limits), job_id)

    def accept(
        self, capture: Capture | TdoaJob, *, batch_id: str | None = None, tenant: str | None = None
    ) -> Accepted:
        """Accept a checked capture. Once this returns, the job is queued and will finish.

        With a job store, the row (holding the task message) is written first and marked
        published once RabbitMQ confirmed the message; a submission that dies in between is
        finished by a worker's relay, or by the client retrying with the same job id.

        Raises:
            JobConflict: the client's job id exists with different IQ, or the same IQ asking
                otherwise (another model, frequency, receivers or expectation), or another
                tenant's.
            ServiceUnavailable: a store or the broker is down or full; nothing is left behind
                but a producer's capture whose task may still arrive (a shim's such job is
                accepted: its row is the relay's).
        """
        job_id = capture.job_id or str(uuid.uuid4())
        payload = capture.payload()
        digest = hashlib.sha256(payload).hexdigest()
        blob_key = self.store.blob_key(job_id, digest)
        message = build_message(
            capture,
            job_id=job_id,
            digest=digest,
            blob_key=blob_key,
            batch_id=batch_id,
            tenant=tenant,
        )
        status, created = "queued", True
        pending = None  # a note of the new job while it waits, stored beside its capture
        if self.jobs is not None:
            try:
                answer = cached_answer(self.store, self.served, message, self.settings.cache_ttl_s)
            except STORE_ERRORS as exc:  # nothing written yet: refused at once
                self._refuse(job_id, blob_key, False, exc)
            row, created = self._record(message, answer)
            status = row["status"]
            if created and answer is not None:
                announce_answered(self.store, row, answer, self.settings.result_ttl_s)
                return Accepted(job_id, status, created=True)
            if not created:
                if status in FINAL_STATUSES or row["published_at"] is not None:
                    return Accepted(job_id, status, created=False)
                # An earlier submission of this job never had its task confirmed (its shim died
                # mid-way, or is still at it): finish that submission now. A second message for
                # the job is harmless: the job store records one result.
                message = stored_message(row) or message
                blob_key = message.blob_key  # the key its message names (an earlier release's
                # differs: its capture must be where its message looks)
            else:
                note = {"job_id": job_id, "status": status, "tenant": row["tenant"]}
                pending = (job_id, note, self.settings.result_ttl_s)
        try:
            if pending is not None:
                self.store.put_blob_and_note(blob_key, payload, self.settings.blob_ttl_s, pending)
            else:
                self.store.put_blob(blob_key, payload, self.settings.blob_ttl_s)
        except UNAVAILABLE_ERRORS as exc:
            self._refuse(job_id, blob_key, created, exc)
        try:
            self.publish(message)
        except UNAVAILABLE_ERRORS as exc:
            sent = may_have_reached(exc)
            if not (sent and self.jobs is not None):
                # Not sent: nothing of it reached the broker. Perhaps sent, with no row to relay
                # it from (a producer): the capture stays for the task that may still arrive.
                self._refuse(job_id, blob_key, created and not sent, exc)
            # The task may be at the broker, unconfirmed: it runs when RabbitMQ delivers it,
            # and its row, unpublished, is the relay's to publish again if it is not.
            # Withdrawn, the task arriving late would fail the job ("capture data is missing").
            log.warning("job %s: %s", job_id, UNCONFIRMED[isinstance(exc, BrokerBlocked)])
            return Accepted(job_id, status, created=created)
        if self.mark_published is not None:
            try:
                self.mark_published(job_id)
            except TRANSIENT_ERRORS as exc:  # published all the same: a relay may send it again
                log.warning("job %s published but not marked so: %s", job_id, exc)
        return Accepted(job_id, status, created=created)

    def _record(
        self, message: LocateMessage, answer: CachedAnswer | None = None
    ) -> tuple[Mapping[str, Any], bool]:
        """Write the job row (with its message, not yet published; or already succeeded with
        ``answer``); the existing row and False when the client's id exists already for the
        same capture."""
        assert self.jobs is not None
        job = new_job(message, published=False)
        try:
            if answer is None:
                row, created = self.jobs.create(job)
            else:
                row, created = self.jobs.create_answered(
                    job,
                    result_json=answer.result_json,
                    model_version=answer.model_version,
                    timings=answer.timings,
                )
        except TRANSIENT_ERRORS as exc:
            log.error("database unavailable while accepting a job: %s", exc)
            raise ServiceUnavailable("the job database is unavailable; retry later") from None
        if not created:
            job_id = message.job_id
            if row["tenant"] != message.tenant:  # say nothing about another tenant's job
                raise JobConflict(f"job_id {job_id!r} is taken; choose another")
            if row["iq_sha256"] != message.iq_sha256:
                raise JobConflict(f"job_id {job_id!r} was already used for a different capture")
            first = stored_message(row)
            changed = [] if first is None else asked_otherwise(first, message)
            if changed:
                raise JobConflict(
                    f"job_id {job_id!r} was already used for this capture asking otherwise: "
                    f"{'; '.join(changed)}; resubmit it as first sent, or choose another job_id"
                )
        return row, created

    def _refuse(self, job_id: str, blob_key: str, withdraw: bool, exc: BaseException) -> NoReturn:
        """Answer a submission the stores or the broker could not take, having withdrawn what
        it left (``withdraw``: its row and capture are this submission's own)."""
        if withdraw:
            self._withdraw(job_id, blob_key, exc)
        reason = describe_unavailable(exc) if isinstance(exc, STORE_ERRORS) else None
        reason = reason or describe_broker_refusal(exc)
        log.error("could not accept job %s, %s: %s: %s", job_id, reason, type(exc).__name__, exc)
        raise ServiceUnavailable(f"{reason}; retry later") from None

    def _withdraw(self, job_id: str, blob_key: str, cause: BaseException) -> None:
        """Remove what the submission left: its row, then its capture and note in Redis, unless
        Redis is what did not answer (one more timeout for the client; they expire)."""
        steps = [] if self.jobs is None else [("row", partial(self.jobs.delete_queued, job_id))]
        if not isinstance(cause, redis.exceptions.TimeoutError):
            steps.append(("capture and note", partial(self.store.withdraw, blob_key, job_id)))
        for what, step in steps:
            try:
                step()
            except Exception as exc:  # best effort: the original failure is what the client hears
                log.warning("could not withdraw the %s of job %s: %r", what, job_id, exc)
