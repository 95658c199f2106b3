"""The dead-letter queue: messages RabbitMQ gave up on, and the jobs they carried.

A task message is dead-lettered when its deliveries keep ending without an answer (the worker
process running it died, or lost its broker connection, more often than the queue's delivery
limit allows) or when a worker rejected it. Each worker's main process consumes
``<queue>.dead`` and records the job as failed with the reason, so its producer reads why
instead of waiting forever. The capture's IQ stays in Redis until its TTL, for whoever wants
to look into it. Nothing from the message body is executed: it is read as JSON, or not at all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kombu
from celery import bootsteps

from inference_worker.core.capture import JOB_ID_PATTERN, parse_json
from inference_worker.storage.database import JobStore
from inference_worker.storage.errors import (
    DATABASE_ERRORS,
    INPUT_ERRORS,
    TRANSIENT_ERRORS,
    first_line,
    store_name,
)
from inference_worker.storage.redis_store import RedisStore
from inference_worker.storage.views import job_view
from tasks.contract import MessageError, read_message
from tasks.outbox import record_job

log = logging.getLogger(__name__)

STORE_RETRY_PAUSE_S = 1.0


@dataclass(frozen=True)
class DeadLetter:
    job_id: str | None
    payload: object
    """The task's first argument (the job message) when the body is a readable Celery task."""
    reason: str
    """Why RabbitMQ dead-lettered it: delivery_limit, rejected, expired, maxlen, or unknown."""
    count: int


def read_dead_letter(
    headers: Mapping[str, Any] | None, body: bytes, content_type: str
) -> DeadLetter:
    """What a dead-lettered task message says about its job, without trusting its body."""
    headers = headers or {}
    payload: object = None
    if content_type == "application/json":
        try:
            decoded = parse_json(body)
        except ValueError:
            decoded = None
        if isinstance(decoded, list) and decoded and isinstance(decoded[0], list) and decoded[0]:
            payload = decoded[0][0]
    job_id: object = payload.get("job_id") if isinstance(payload, dict) else None
    if not isinstance(job_id, str):
        job_id = headers.get("id")
    deaths = headers.get("x-death") or []
    last = deaths[0] if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict) else {}
    reason = str(last.get("reason") or headers.get("x-first-death-reason") or "unknown")
    count = last.get("count", 1)
    return DeadLetter(
        job_id=job_id if isinstance(job_id, str) and JOB_ID_PATTERN.match(job_id) else None,
        payload=payload,
        reason=reason,
        count=count if isinstance(count, int) else 1,
    )


def failure_reason(letter: DeadLetter, delivery_limit: int) -> str:
    if letter.reason == "delivery_limit":
        return (
            f"gave up after {delivery_limit + 1} deliveries: each ended without a result (the "
            "worker process running the job died or lost its broker connection); the message "
            "was moved to the dead-letter queue"
        )
    if letter.reason == "rejected":
        return "a worker rejected the task message without recording a result; it was dead-lettered"
    return f"the task message was dead-lettered by the broker ({letter.reason})"


def record_dead_letter(
    jobs: JobStore, redis: RedisStore, letter: DeadLetter, reason: str, result_ttl_s: int
) -> bool:
    """Fail the letter's job with ``reason`` unless it is already final; True if recorded.

    Raises:
        One of :data:`~inference_worker.storage.errors.TRANSIENT_ERRORS` when a store is
        unreachable.
    """
    if letter.job_id is None:
        log.error("dead-lettered message with no usable job id dropped (%s)", letter.reason)
        return False
    if jobs.get(letter.job_id) is None:
        try:
            record_job(jobs, read_message(letter.payload))
        except MessageError:
            pass  # record_rejected below keeps the reason without the capture's fields
        except INPUT_ERRORS as exc:  # the message's values, not the store: the same again
            log.warning("dead-lettered job %s recorded without its fields: %s", letter.job_id, exc)
    final = jobs.fail(letter.job_id, reason)
    if final is None and jobs.get(letter.job_id) is None:
        final = jobs.record_rejected(letter.job_id, reason)
    if final is None:
        log.info("dead-lettered job %s was already final", letter.job_id)
        return False
    log.error("job %s failed: %s", letter.job_id, reason)
    redis.put_result(letter.job_id, job_view(final), result_ttl_s)
    return True


def dead_letter_step(
    queue: str,
    delivery_limit: int,
    stores: Any,
    result_ttl_s: int,
) -> type[bootsteps.ConsumerStep]:
    """A Celery consumer step that drains ``<queue>.dead`` in the worker's main process.

    ``stores`` is a callable returning the main process's stores (``.jobs``, ``.redis``), built
    on first use.
    """
    from inference_worker.serving import observability
    from tasks.app import dead_letter_queue

    class DeadLetters(bootsteps.ConsumerStep):
        name = "heimdall.dead_letters"

        def get_consumers(self, channel: Any) -> list[kombu.Consumer]:
            return [
                kombu.Consumer(
                    channel,
                    queues=[dead_letter_queue(queue)],
                    on_message=self.on_message,
                    prefetch_count=1,
                )
            ]

        def on_message(self, message: kombu.Message) -> None:
            letter = read_dead_letter(message.headers, message.body, message.content_type)
            try:
                found = stores()
                jobs, redis = found.jobs, found.redis
                if record_dead_letter(
                    jobs, redis, letter, failure_reason(letter, delivery_limit), result_ttl_s
                ):
                    observability.record_job({"status": "dead_lettered"})
            except INPUT_ERRORS as exc:  # waiting cannot mend it; it would hold every letter
                log.error(
                    "dead-lettered job %s cannot be recorded (the same values would fail "
                    "again); the letter is dropped: %s",
                    letter.job_id,
                    exc,
                )
            except (*TRANSIENT_ERRORS, *DATABASE_ERRORS) as exc:  # a job must end recorded:
                # whatever keeps the stores from it is waited out (an outage, a server fault)
                log.warning(
                    "cannot record dead-lettered job %s yet: %s", letter.job_id, first_line(exc)
                )
                observability.record_store_retry(store_name(exc))
                time.sleep(STORE_RETRY_PAUSE_S)  # the stores are down: do not spin
                message.requeue()
                return
            message.ack()

    return DeadLetters
