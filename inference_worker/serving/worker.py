"""The Celery worker: app factory, the thin ``heimdall.locate`` task, its time limits, and the
main process's steps (dead letters, the relay and retention).

Each worker process creates its onnxruntime session and store connections once, after the
prefork fork (``worker_process_init``, :mod:`inference_worker.serving.runtime`), never at import
time.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

import celery.worker.consumer
from billiard.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery import Celery, bootsteps
from celery.signals import task_failure, worker_process_init, worker_process_shutdown

from inference_worker.serving import observability
from inference_worker.serving.dead_letters import dead_letter_step
from inference_worker.serving.jobs import fail_job, message_job_id, run_job
from inference_worker.serving.recovery import Stores, Upkeep, open_stores, record_failure
from inference_worker.serving.runtime import ProcessRuntime
from inference_worker.settings import Settings
from inference_worker.storage.errors import TRANSIENT_ERRORS
from tasks.app import create_celery, publisher
from tasks.contract import TASK_NAME

log = logging.getLogger(__name__)

T = TypeVar("T")


def retry_delay_s(retries: int) -> float:
    """Exponential backoff with full jitter, capped at half a minute."""
    return random.uniform(0.5, min(30.0, 2.0 ** (retries + 1)))


def with_store_retries(
    run: Callable[[], T],
    attempts: int,
    sleep: Callable[[float], None] = time.sleep,
    deadline: float = float("inf"),
) -> T:
    """Call ``run``; on a transient store error wait (backoff with jitter) and call it again.

    The message stays in hand meanwhile, so nothing is lost if the process dies while waiting.
    No wait reaches past ``deadline`` (a ``time.monotonic()`` value).

    Raises:
        The last transient error after ``attempts`` calls, or when the next wait would end
        past ``deadline``.
    """
    for attempt in range(attempts - 1):
        try:
            return run()
        except TRANSIENT_ERRORS as exc:
            delay = retry_delay_s(attempt)
            if time.monotonic() + delay > deadline:
                raise
            log.warning(
                "transient store error (attempt %d of %d), retrying in %.1f s: %s",
                attempt + 1,
                attempts,
                delay,
                exc,
            )
            sleep(delay)
    return run()


class Consumer(celery.worker.consumer.Consumer):
    """Celery's consumer without native delayed delivery.

    Celery sets that up whenever it sees a quorum queue: 28 extra queues and exchanges on the
    broker, and a warning, since it does not work with direct exchanges. This service never
    publishes a task with a countdown or an ETA, so it has no use for them.
    """

    class Blueprint(celery.worker.consumer.Consumer.Blueprint):
        default_steps = [
            step
            for step in celery.worker.consumer.Consumer.Blueprint.default_steps
            if not step.endswith(":DelayedDelivery")
        ]


def create_worker_app(settings: Settings) -> Celery:
    """The worker's Celery app with the ``heimdall.locate`` task registered."""
    app = create_celery(settings.broker_url, settings.queue, delivery_limit=settings.max_deliveries)
    runtime = ProcessRuntime(settings)
    app.conf.heimdall_runtime = runtime
    app.conf.worker_consumer = f"{__name__}:Consumer"
    soft_limit = settings.task_soft_time_limit_s or None
    # Store outages are waited out within half the soft limit, then the message goes back to
    # the queue: only a job stuck in its own work meets the limit.
    retry_budget_s = (soft_limit or settings.task_time_limit_s) / 2

    def attempt(payload: object, task_id: str | None) -> dict[str, Any]:
        services, unavailable = runtime.services_for(payload)
        if unavailable is not None:
            return fail_job(payload, services, unavailable, task_id).to_json()
        return run_job(payload, services, task_id).to_json()

    @app.task(
        name=TASK_NAME,
        bind=True,
        max_retries=None,
        soft_time_limit=soft_limit,
        time_limit=settings.task_time_limit_s,
    )
    def locate(self: Any, payload: object) -> dict[str, Any]:
        try:
            return with_store_retries(
                lambda: attempt(payload, self.request.id),
                settings.task_max_retries + 1,
                deadline=time.monotonic() + retry_budget_s,
            )
        except TRANSIENT_ERRORS as exc:
            # A long outage: put a fresh copy of the message at the back of the queue (its
            # delivery count starts again, so an outage never dead-letters a job) and let the
            # worker take other work meanwhile.
            log.warning("stores still unavailable; job goes back to the queue: %s", exc)
            raise self.retry(exc=exc, countdown=0) from None
        except SoftTimeLimitExceeded:
            reason = f"stopped after {soft_limit:g} s, the job time limit; not retried"
            log.error("job %s %s", self.request.id, reason)
            return fail_job(payload, runtime.services(), reason, self.request.id).to_json()
        except Exception as exc:  # a bug, not the input: record it rather than retry forever
            log.exception("job failed with an unexpected error")
            reason = f"internal error in the worker: {type(exc).__name__}: {exc}"
            # If even this cannot be recorded, the task raises: its message is rejected to the
            # dead-letter queue, whose consumer fails the job.
            return fail_job(payload, runtime.services(), reason, self.request.id).to_json()

    @functools.cache
    def main_process_stores() -> Stores:
        return open_stores(settings, role="heimdall-worker")

    def on_hard_time_limit(
        sender: Any = None,
        task_id: str | None = None,
        exception: Any = None,
        args: Any = None,
        **_: Any,
    ) -> None:
        """In the main process, after the pool replaced a process stuck past the hard limit."""
        if getattr(sender, "name", None) != TASK_NAME or not isinstance(
            exception, TimeLimitExceeded
        ):
            return
        job_id = message_job_id(args[0] if args else None, task_id)
        reason = (
            f"stopped after {settings.task_time_limit_s:g} s, the hard job time limit (the "
            "worker process was replaced); not retried"
        )
        if job_id is not None:
            record_failure(main_process_stores(), job_id, reason, settings.result_ttl_s)

    app.steps["consumer"].add(
        dead_letter_step(
            settings.queue, settings.max_deliveries, main_process_stores, settings.result_ttl_s
        )
    )
    app.steps["worker"].add(
        upkeep_step(
            Upkeep(
                settings,
                main_process_stores,
                publisher(app, settings.queue, settings.publish_confirm_timeout_s),
            )
        )
    )
    task_failure.connect(on_hard_time_limit, weak=False)
    worker_process_init.connect(runtime.start, weak=False)
    worker_process_shutdown.connect(runtime.stop, weak=False)
    observability.connect_worker_signals()
    return app


def upkeep_step(upkeep: Upkeep) -> type[bootsteps.StartStopStep]:
    """A worker bootstep running the relay and retention thread in the main process."""

    class UpkeepStep(bootsteps.StartStopStep):
        name = "heimdall.upkeep"

        def start(self, worker: Any) -> None:
            upkeep.start()

        def stop(self, worker: Any) -> None:
            upkeep.stop()

    return UpkeepStep
