"""Micro-batching in the worker's main process: a Celery task strategy that hands the pool
several waiting messages at once.

Celery runs one message per pool call; each job then pays its own store round trips and its own
trip through the pool. This strategy keeps the messages it receives (up to the prefetch window)
and gives each idle pool process the waiting ones together (at most ``max_batch``, and at most
an even share of the jobs waiting and running among the processes, so that a burst is spread
over them); a message that arrives while a process is idle goes at once, alone. Each message
is acknowledged only after the pool process reports its job recorded, so the guarantees of a
lone task hold:

* the pool process dies (SIGKILL, out of memory): every message of its batch is rejected with
  requeue, so RabbitMQ delivers it again and counts the delivery (the queue's delivery limit
  dead-letters a message that keeps killing workers);
* the batch passes the hard time limit: a lone job is failed with the reason and acknowledged
  (as Celery does with ``task_acks_on_timeout``); a batch's messages are requeued, and a message
  delivered again always travels alone, so only the job that is really stuck meets the limit;
* the worker loses its connection: unacknowledged messages go back to the queue by themselves.

A batch's acknowledgements travel as one ``multiple`` ack where no older message of the channel
still waits for its outcome (:class:`~inference_worker.core.batching.AckRanges`), else one by one.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from billiard.exceptions import TimeLimitExceeded, WorkerLostError
from celery.exceptions import InvalidTaskError
from kombu.exceptions import DecodeError
from kombu.utils.json import object_hook

from inference_worker.core.batching import AckRanges, fair_limit, take_batches
from inference_worker.core.capture import capture_nbytes
from inference_worker.storage.errors import first_line

log = logging.getLogger(__name__)

Item = tuple[object, str | None]
"""One message's ``(payload, task id)``, as the pool process receives it."""
Verdict = tuple[str, dict[str, Any] | None]
"""What the pool process says of one message: ``ack``, ``requeue`` or ``dead`` (reject to the
dead-letter queue), with its job's outcome when there is one."""

_handler: Callable[[list[Item]], list[Verdict]] | None = None

_JSON = json.JSONDecoder(object_hook=object_hook)
"""kombu's JSON decoding, built once: kombu builds a decoder for every message it decodes."""


def decode_body(message: Any) -> Any:
    """The message's body as kombu's ``message.decode()`` reads it.

    JSON, the service's only format, is read by one decoder kept for the process (building one
    a message was half the decoding's cost in the worker's main process); anything else, and
    JSON that does not parse, goes to kombu, which refuses a content type the app does not
    accept and raises its own error for a bad body.
    """
    headers = message.headers if isinstance(message.headers, dict) else {}
    if (
        message.content_type == "application/json"
        and message.content_encoding in ("utf-8", "utf8")
        and "compression" not in headers
    ):
        body = message.body
        try:
            return _JSON.decode(body if isinstance(body, str) else bytes(body).decode("utf-8"))
        except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested past the parser's
            pass  # depth (a RecursionError stopped the whole worker): kombu says what is wrong
    return message.decode()


def install_handler(handler: Callable[[list[Item]], list[Verdict]]) -> None:
    """Set what a pool process runs for a batch (before the pool forks: the processes inherit
    it, and only the module-level :func:`run_batch` travels through the pool's pipe)."""
    global _handler
    _handler = handler


def run_batch(items: list[Item]) -> list[Verdict]:
    """The pool's target: the installed handler on one batch, answered without the jobs'
    outcomes (already recorded; the main process reads only what to do with each message, and
    carrying them through the pool's pipe cost a pickle and an unpickle a job)."""
    if _handler is None:
        raise RuntimeError("no batch handler installed in this worker process")
    return [(verdict, None) for verdict, _ in _handler(items)]


@dataclass
class Delivery:
    """A received message waiting for, or in, a batch."""

    item: Item
    message: Any
    """The kombu message, settled by the strategy once its job's outcome is known."""
    ranges: AckRanges
    """The acknowledgements of the message's channel."""
    alone: bool
    received_at: float = 0.0
    size: int = 0
    """Bytes of the capture the message refers to (0 when it does not say)."""


@dataclass(frozen=True)
class BatchLimits:
    max_batch: int
    max_bytes: int
    """Capture data in one batch at most (a larger capture still runs, alone)."""
    soft_time_limit_s: float | None
    time_limit_s: float | None


def capture_bytes(payload: object) -> int:
    """Bytes of the capture a task message refers to, from its sample count (0 when the message
    does not say: its job fails on its own in the pool, whatever batch it is in)."""
    n_samples = payload.get("n_samples") if isinstance(payload, dict) else None
    if isinstance(n_samples, int) and n_samples > 0:
        return capture_nbytes(n_samples)
    return 0


class BatchingStrategy:
    """Celery calls this for every message of the task it is attached to (``Task.Strategy``)."""

    def __init__(
        self,
        consumer: Any,
        task_name: str,
        limits: BatchLimits,
        on_hard_limit: Callable[[Item], None],
    ) -> None:
        self.pool = consumer.pool
        self.connection_errors = consumer.connection_errors
        self.events = consumer.event_dispatcher
        self.task_name = task_name
        self.slots = max(1, int(getattr(self.pool, "limit", 1) or 1))
        self.limits = limits
        self.on_hard_limit = on_hard_limit
        self.waiting: list[Delivery] = []
        self.in_flight = 0
        self.running = 0
        """Messages in the batches in flight."""
        self.channel: Any = None
        self.ranges = AckRanges()

    def __call__(
        self, message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **_: Any
    ) -> None:
        ranges = self._ranges_of(message)
        try:
            # Decoding checks the content type: a message that is not JSON raises here, and
            # Celery's consumer rejects it unread (to the dead-letter queue, whose consumer
            # fails the job its task id names). A body that does not decode Celery would
            # acknowledge and drop, its job never recorded: it is rejected the same way.
            decoded = decode_body(message)
        except DecodeError as exc:
            ranges.forget(message.delivery_tag)
            raise InvalidTaskError(f"the task body cannot be decoded: {exc}") from exc
        except Exception:
            ranges.forget(message.delivery_tag)
            raise
        args = decoded[0] if isinstance(decoded, list | tuple) and decoded else None
        payload = args[0] if isinstance(args, list | tuple) and args else None
        task_id = message.headers.get("id") if isinstance(message.headers, dict) else None
        method = payload.get("method") if isinstance(payload, dict) else None
        # A TDoA job is long; a message delivered again may be the one that stopped a batch.
        alone = method not in (None, "model") or bool(message.delivery_info.get("redelivered"))
        self.waiting.append(
            Delivery(
                (payload, task_id),
                message,
                ranges,
                alone,
                time.monotonic(),
                capture_bytes(payload),
            )
        )
        self._event("task-received", task_id, name=self.task_name, args="", kwargs="{}")
        self.dispatch()

    def _event(self, kind: str, task_id: str | None, **fields: Any) -> None:
        """Flower's view of each job (sent only while a monitor turned events on)."""
        if self.events is not None and self.events.enabled and task_id is not None:
            try:
                self.events.send(kind, uuid=task_id, **fields)
            except Exception as exc:  # monitoring must never stop the worker
                log.warning("could not send a %s event: %s", kind, exc)

    def dispatch(self) -> None:
        batches = take_batches(
            self.waiting,
            self.slots - self.in_flight,
            fair_limit(len(self.waiting), self.running, self.slots, self.limits.max_batch),
            lambda d: d.alone,
            size=lambda d: d.size,
            budget=self.limits.max_bytes,
        )
        for batch in batches:
            self.in_flight += 1
            self.running += len(batch)
            for delivery in batch:
                self._event("task-started", delivery.item[1])
            self.pool.apply_async(
                run_batch,
                args=([d.item for d in batch],),
                callback=partial(self._done, batch),
                error_callback=partial(self._lost, batch),
                soft_timeout=self.limits.soft_time_limit_s,
                timeout=self.limits.time_limit_s,
            )

    def _ranges_of(self, message: Any) -> AckRanges:
        """The acknowledgements of the message's channel, told of this delivery."""
        if message.channel is not self.channel:  # first message, or a new channel
            self.channel, self.ranges = message.channel, AckRanges()
        self.ranges.received(message.delivery_tag)
        return self.ranges

    def _settle(self, settled: list[tuple[Delivery, str]]) -> None:
        """Send each message's verdict to the broker, channel by channel, in order: the
        rejects, then the acks, as one ``multiple`` ack where the channel allows it (one frame
        instead of one a job).

        The frames are written here, in the order chosen, rather than through Celery's ack
        callbacks, which the event loop runs in no set order: a ``multiple`` ack sent before a
        reject it reaches over would acknowledge that message and close the channel. Messages
        whose connection has gone (the broker restarted, or was given up on) cannot be settled:
        the broker delivers them again, and a job already final is acknowledged then as a
        duplicate. That is said in one line for them all (kombu logged each as critical, with
        its traceback: 73 of them after one lost connection).
        """
        unsettled, reason = 0, ""
        # Every channel the batch touched learns of its rejects, acks or not: a tag left
        # unsettled there would stop every later range.
        for ranges in {id(d.ranges): d.ranges for d, _ in settled}.values():
            own = [(d, verdict) for d, verdict in settled if d.ranges is ranges]
            try:
                self._settle_on(ranges, own)
            except self.connection_errors as exc:
                unsettled, reason = unsettled + len(own), reason or first_line(exc)
        now = time.monotonic()
        for delivery, verdict in settled:
            if verdict == "ack":
                runtime = now - delivery.received_at
                self._event("task-succeeded", delivery.item[1], result="", runtime=runtime)
            else:
                fate = "delivered again" if verdict == "requeue" else "dead-lettered"
                self._event(
                    "task-failed", delivery.item[1], exception=f"message {fate}", traceback=""
                )
        if unsettled:
            log.warning(
                "%d of %d messages not settled: the broker connection they came on is gone "
                "(%s); RabbitMQ delivers them again",
                unsettled,
                len(settled),
                reason,
            )

    @staticmethod
    def _settle_on(ranges: AckRanges, settled: list[tuple[Delivery, str]]) -> None:
        """The verdicts of one channel's messages: the rejects, then the acks."""
        acks = [d for d, verdict in settled if verdict == "ack"]
        rejects = [(d, verdict) for d, verdict in settled if verdict != "ack"]
        for delivery, verdict in rejects:
            delivery.message.reject(requeue=verdict == "requeue")
        top, alone = ranges.plan(
            [d.message.delivery_tag for d in acks],
            [d.message.delivery_tag for d, _ in rejects],
        )
        by_tag = {d.message.delivery_tag: d for d in acks}
        if top is not None:
            by_tag[top].message.ack(multiple=True)
        for tag in alone:
            by_tag[tag].message.ack()

    def _done(self, batch: list[Delivery], verdicts: Any) -> None:
        self.in_flight -= 1
        self.running -= len(batch)
        try:
            if not isinstance(verdicts, list) or len(verdicts) != len(batch):
                log.error("batch handler answered %r; its messages go back to the queue", verdicts)
                verdicts = [("requeue", None)] * len(batch)
            self._settle([(d, v) for d, (v, _) in zip(batch, verdicts, strict=True)])
        finally:
            self.dispatch()

    def _lost(self, batch: list[Delivery], failure: Any) -> None:
        """The pool lost the batch: its process died, or passed the hard time limit."""
        self.in_flight -= 1
        self.running -= len(batch)
        exception = getattr(failure, "exception", failure)
        exception = getattr(exception, "exc", exception)  # billiard's ExceptionWithTraceback
        try:
            if isinstance(exception, TimeLimitExceeded) and len(batch) == 1:
                try:
                    self.on_hard_limit(batch[0].item)
                except Exception:  # acknowledged anyway: the operators' stuck-job tools see it
                    log.exception("could not record a job stopped at the hard time limit")
                self._settle([(batch[0], "ack")])
                return
            requeue = isinstance(exception, TimeLimitExceeded | WorkerLostError)
            log.error(
                "a batch of %d jobs was lost (%r); its messages are %s",
                len(batch),
                exception,
                "delivered again" if requeue else "dead-lettered",
            )
            self._settle([(d, "requeue" if requeue else "dead") for d in batch])
        finally:
            self.dispatch()
