"""The job row, and the row as the outbox of its task message.

The one rule for who writes a job row: the shim, before it publishes (``record_job`` with
``published=False``), so that a poll right after its 202 finds the job; for a message that reached
the queue any other way (the producer client talks to no database), the worker that takes it
(``start_job``) or the dead-letter consumer that meets it (``record_job``). Every row is copied
from a task message by :func:`new_job`, and keeps that message: until RabbitMQ confirms it, the
row is the outbox a worker's relay publishes from if the shim died.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

from inference_worker.storage.database import JobStore, NewJob
from inference_worker.storage.errors import DATABASE_ERRORS
from tasks.contract import LocateMessage, MessageError, read_message

log = logging.getLogger(__name__)


def new_job(message: LocateMessage, *, published: bool = True) -> NewJob:
    """The job row a task message describes (``published``: the message is on the queue)."""
    return NewJob(
        job_id=message.job_id,
        capture_time=message.capture_time,
        frequency_mhz=message.frequency_mhz,
        sample_rate_hz=message.sample_rate_hz,
        n_samples=message.n_samples,
        receivers=list(message.receivers),
        iq_sha256=message.iq_sha256,
        created_at=message.submitted_at,
        batch_id=message.batch_id,
        tenant=message.tenant,
        message=message.to_json(),
        published=published,
    )


def record_job(
    jobs: JobStore, message: LocateMessage, *, published: bool = True
) -> tuple[Mapping[str, Any], bool]:
    """Write the job row of ``message`` unless it exists; returns the row and whether it is new.

    ``published`` is False only for the shim, which writes the row before it publishes; a
    worker or the dead-letter consumer records a message it took from the broker.

    Raises:
        One of :data:`TRANSIENT_ERRORS` when PostgreSQL is unreachable.
    """
    return jobs.create(new_job(message, published=published))


def start_job(jobs: JobStore, message: LocateMessage) -> dict[str, Any] | None:
    """Mark the job of a message taken from the queue running, in one statement; its row is
    written from the message first if it has none (a producer's). ``None``: already final, or
    of another capture (a producer reused its id), and left as it is.

    Raises:
        One of :data:`TRANSIENT_ERRORS` when PostgreSQL is unreachable.
    """
    return jobs.start(new_job(message))


def stored_message(row: Mapping[Any, Any]) -> LocateMessage | None:
    """The task message kept in a job's row (None for rows of releases that kept none)."""
    try:
        return read_message(row["message"]) if row["message"] is not None else None
    except MessageError:
        return None


ASKED = (
    "method",
    "receivers",
    "stations",
    "frequency_mhz",
    "sample_rate_hz",
    "model",
    "expect_emitter",
    "propagation",
)
"""What a job asks beyond its capture's bytes: the same job id resubmitted with the same capture
but any of these otherwise asks for another job. Not ``capture_time``: left out of a
submission, it is the time of that submission (or of a TDoA set's file names)."""


def asked_otherwise(first: LocateMessage, again: LocateMessage) -> list[str]:
    """How ``again`` asks otherwise than ``first`` for the same capture: one ``name (first:
    value, now: value)`` per field of :data:`ASKED` that differs (positions and receivers by
    name only); empty when it asks the same."""
    changed = [name for name in ASKED if getattr(first, name) != getattr(again, name)]
    return [
        name
        if name in ("receivers", "stations")
        else f"{name} (first: {_shown(getattr(first, name))}, now: {_shown(getattr(again, name))})"
        for name in changed
    ]


def _shown(value: object) -> str:
    return "not given" if value is None else repr(value) if isinstance(value, str) else str(value)


class DeferredMarks:
    """Marks jobs published in batches, from a thread of this process: one UPDATE for all the
    confirms of the last ``interval_s``, instead of a round trip per submission.

    A process that dies before a flush leaves its last rows unmarked: a worker's relay publishes
    their messages again after ``outbox_grace_s``, and a second message is harmless (one job,
    one result).
    """

    def __init__(self, jobs: JobStore, interval_s: float = 0.05) -> None:
        self.jobs = jobs
        self.interval_s = interval_s
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._owner: int | None = None  # the pid whose thread flushes (gunicorn forks)

    def __call__(self, job_id: str) -> None:
        with self._lock:
            self._pending.append(job_id)
            if self._owner != os.getpid():
                self._owner = os.getpid()
                threading.Thread(target=self._run, name="heimdall-marks", daemon=True).start()
                atexit.register(self.flush)

    def _run(self) -> None:
        while True:
            threading.Event().wait(self.interval_s)
            try:
                self.flush()
            except Exception:  # the thread outlives any one flush: unmarked rows are the relay's
                log.exception("marks of published jobs not written; the relay publishes them again")

    def flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            self.jobs.mark_published(*batch)
        except DATABASE_ERRORS as exc:  # left to the relay: it publishes them again
            log.warning("%d jobs published but not marked so: %s", len(batch), exc)
