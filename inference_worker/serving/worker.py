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
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import celery
import celery.worker.consumer
from billiard.exceptions import SoftTimeLimitExceeded
from celery import Celery, bootsteps
from celery.exceptions import CPendingDeprecationWarning
from celery.signals import (
    task_postrun,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)

from inference_worker.serving import observability
from inference_worker.serving.batching import (
    BatchingStrategy,
    BatchLimits,
    Item,
    Verdict,
    install_handler,
)
from inference_worker.serving.dead_letters import dead_letter_step
from inference_worker.serving.job_batches import run_jobs
from inference_worker.serving.jobs import JobServices, fail_job, message_job_id
from inference_worker.serving.recovery import Stores, Upkeep, open_stores, record_failure
from inference_worker.serving.registry import RegistryUnavailable
from inference_worker.serving.runtime import ProcessRuntime
from inference_worker.settings import Settings
from inference_worker.storage.errors import TRANSIENT_ERRORS, first_line, store_name
from tasks.alarm import BrokerBlocked
from tasks.app import broker_alarm, create_celery, publisher
from tasks.contract import TASK_NAME, read_message

log = logging.getLogger(__name__)

T = TypeVar("T")

WAITED_OUT: tuple[type[BaseException], ...] = (*TRANSIENT_ERRORS, RegistryUnavailable)
"""What a job in hand waits out: a store, or the model registry a job's requested version is
fetched from, not answering for a while."""


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
        except WAITED_OUT as exc:
            delay = retry_delay_s(attempt)
            if time.monotonic() + delay > deadline:
                raise
            log.warning(
                "transient store error (attempt %d of %d), retrying in %.1f s: %s",
                attempt + 1,
                attempts,
                delay,
                first_line(exc),
            )
            observability.record_store_retry(
                "registry" if isinstance(exc, RegistryUnavailable) else store_name(exc)
            )
            sleep(delay)
    return run()


class Consumer(celery.worker.consumer.Consumer):
    """Celery's consumer without native delayed delivery, sending its events unconfirmed.

    Celery sets delayed delivery up whenever it sees a quorum queue: 28 extra queues and
    exchanges on the broker, and a warning, since it does not work with direct exchanges. This
    service never publishes a task with a countdown or an ETA, so it has no use for them.

    Events (the heartbeat every 2 s, task events while a monitor asks for them) are sent from
    the consumer's event loop. Waiting for their confirms stopped the loop, and with it every
    delivery, for as long as a RabbitMQ memory or disk alarm lasted, since RabbitMQ reads
    nothing from a blocked connection: workers could not drain the backlog that had set the
    alarm off. An event is worth no wait: its connection publishes without confirms.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The tasks in hand when a connection is lost run on, as set (tasks/app.py); Celery
        # warns of that setting's coming default at every lost connection all the same, in 7
        # lines. Made after Celery's logging set its warnings to "always": this comes first.
        warnings.filterwarnings(
            "ignore",
            r"\s*In Celery 5\.1 we introduced an optional breaking change",
            CPendingDeprecationWarning,
        )
        super().__init__(*args, **kwargs)

    def shutdown(self) -> None:
        # A connection RabbitMQ blocks in an alarm reads no closing handshake: the events
        # connection, blocked since its last event, is dropped instead, or the worker would not
        # stop until the alarm cleared.
        dispatcher = self.event_dispatcher
        events = getattr(dispatcher, "connection", None)
        if events is not None and events.connected:
            try:
                broker_alarm(self.app).listen(events)
            except BrokerBlocked:
                events.collect()
            except Exception as exc:  # already gone: nothing to close
                log.debug("events connection at shutdown: %s", exc)
        super().shutdown()

    def connection_for_write(self, url: str | None = None, heartbeat: float | None = None) -> Any:
        # Only the events step asks the consumer for a connection to write on.
        return self.ensure_connected(
            self.app.connection_for_write(
                url=url, heartbeat=heartbeat, transport_options={"confirm_publish": False}
            )
        )

    class Blueprint(celery.worker.consumer.Consumer.Blueprint):
        default_steps = [
            step
            for step in celery.worker.consumer.Consumer.Blueprint.default_steps
            if not step.endswith(":DelayedDelivery")
        ]


class BatchedTask(celery.Task):
    """A task whose messages reach the pool in batches (see :mod:`.batching`)."""

    batch_limits: BatchLimits
    on_hard_limit: Callable[[Item], None]

    def Strategy(self, task: Any, app: Celery, consumer: Any) -> BatchingStrategy:  # noqa: N802
        return BatchingStrategy(consumer, task.name, self.batch_limits, self.on_hard_limit)


def create_worker_app(settings: Settings) -> Celery:
    """The worker's Celery app with the ``heimdall.locate`` task registered."""
    app = create_celery(settings.broker_url, settings.queue, delivery_limit=settings.max_deliveries)
    runtime = ProcessRuntime(settings)
    app.conf.heimdall_runtime = runtime
    app.conf.worker_consumer = f"{__name__}:Consumer"
    # Celery's 120 s, lowered to RabbitMQ's 60, left a consumer behind a stalled host or a cut
    # network taking its prefetched jobs from everyone for three minutes (measured 177 s
    # before RabbitMQ let them go; 10 s: about twenty-five).
    app.conf.broker_heartbeat = settings.broker_heartbeat_s
    # Two batches in hand for every process: the one it runs and a full one waiting, so a
    # process that finishes starts again at once instead of idling while its acks travel and
    # RabbitMQ sends more (one batch in hand measured 0.54x of the bare pipeline, two 0.60x).
    app.conf.worker_prefetch_multiplier = 2 * settings.worker_batch_size
    soft_limit = settings.task_soft_time_limit_s or None
    # Store outages are waited out within half the soft limit, then the messages go back to
    # the queue: only a job stuck in its own work meets the limit.
    retry_budget_s = (soft_limit or settings.task_time_limit_s) / 2
    republish = publisher(app, settings.queue, settings.publish_confirm_timeout_s)

    def run_batch_jobs(items: list[Item]) -> list[dict[str, Any]]:
        """The jobs of a batch, grouped by the model each is served by."""
        outcomes: list[dict[str, Any] | None] = [None] * len(items)
        groups: dict[int, tuple[JobServices, list[int]]] = {}
        for index, (payload, task_id) in enumerate(items):
            services, unavailable = runtime.services_for(payload, refresh=index == 0)
            if unavailable is not None:
                outcomes[index] = fail_job(payload, services, unavailable, task_id).to_json()
            else:
                groups.setdefault(id(services.model), (services, []))[1].append(index)
        for services, indices in groups.values():
            done = run_jobs([items[i] for i in indices], services)
            for index, outcome in zip(indices, done, strict=True):
                outcomes[index] = outcome.to_json()
        return [outcome or {} for outcome in outcomes]

    def send_back(items: list[Item], exc: BaseException) -> list[Verdict]:
        """A long outage: publish a fresh copy of each message at the back of the queue (its
        delivery count starts again, so an outage never dead-letters a job) and acknowledge
        the old one; the worker takes other work meanwhile."""
        log.warning(
            "stores still unavailable; %d jobs go back to the queue: %s",
            len(items),
            first_line(exc),
        )
        verdicts: list[Verdict] = []
        for payload, _ in items:
            try:
                republish(read_message(payload))
                verdicts.append(("ack", None))
            except Exception as error:  # the broker too: RabbitMQ delivers it again
                log.warning("could not send a job back to the queue: %s", error)
                verdicts.append(("requeue", None))
        return verdicts

    def stopped(items: list[Item]) -> list[Verdict]:
        if len(items) > 1:  # delivered again, each alone: only the stuck job meets the limit
            return [("requeue", None)] * len(items)
        payload, task_id = items[0]
        reason = f"stopped after {soft_limit:g} s, the job time limit; not retried"
        log.error("job %s %s", message_job_id(payload, task_id), reason)
        return [("ack", fail_job(payload, runtime.services(), reason, task_id).to_json())]

    def one_by_one(items: list[Item], exc: Exception) -> list[Verdict]:
        """A bug, not the input: record it on each job rather than retry forever."""
        log.error("batch failed (%s: %s); its jobs are recorded one by one", type(exc), exc)
        verdicts: list[Verdict] = []
        for payload, task_id in items:
            try:
                verdicts.append(("ack", run_batch_jobs([(payload, task_id)])[0]))
            except Exception as error:
                log.exception("job failed with an unexpected error")
                reason = f"internal error in the worker: {type(error).__name__}: {error}"
                try:
                    outcome = fail_job(payload, runtime.services(), reason, task_id)
                    verdicts.append(("ack", outcome.to_json()))
                except Exception:  # not even recorded: the dead-letter consumer fails the job
                    verdicts.append(("dead", None))
        return verdicts

    def handle_batch(items: list[Item]) -> list[Verdict]:
        """In a pool process: the jobs of a batch, and what to do with each message."""
        try:
            outcomes = with_store_retries(
                lambda: run_batch_jobs(items),
                settings.task_max_retries + 1,
                deadline=time.monotonic() + retry_budget_s,
            )
            verdicts: list[Verdict] = [("ack", outcome) for outcome in outcomes]
        except WAITED_OUT as exc:
            verdicts = send_back(items, exc)
        except SoftTimeLimitExceeded:
            verdicts = stopped(items)
        except Exception as exc:
            verdicts = one_by_one(items, exc)
        for _, outcome in verdicts:
            if outcome:
                task_postrun.send(sender=locate, retval=outcome, state="SUCCESS")
        return verdicts

    @functools.cache
    def main_process_stores() -> Stores:
        return open_stores(settings, role="heimdall-worker")

    def on_hard_limit(item: Item) -> None:
        """In the main process, after the pool replaced a process stuck past the hard limit."""
        job_id = message_job_id(*item)
        reason = (
            f"stopped after {settings.task_time_limit_s:g} s, the hard job time limit (the "
            "worker process was replaced); not retried"
        )
        log.error("job %s %s", job_id, reason)
        if job_id is not None:
            record_failure(main_process_stores(), job_id, reason, settings.result_ttl_s)

    @app.task(
        name=TASK_NAME,
        base=BatchedTask,
        bind=True,
        batch_limits=BatchLimits(
            settings.worker_batch_size,
            settings.worker_batch_mb * 1024 * 1024,
            soft_limit,
            settings.task_time_limit_s,
        ),
        on_hard_limit=staticmethod(on_hard_limit),  # a plain function, not a method
    )
    def locate(self: Any, payload: object) -> list[Verdict]:
        """One message run in place (``apply``); the worker itself runs batches."""
        return handle_batch([(payload, self.request.id)])

    install_handler(handle_batch)
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
    worker_process_init.connect(runtime.start, weak=False)
    worker_process_shutdown.connect(runtime.stop, weak=False)
    # Celery never closes the connections its processes published on (the relay's, a batch
    # sent back): closed as RabbitMQ expects, not dropped with the process.
    close = lambda **_: app.close()  # noqa: E731
    worker_process_shutdown.connect(close, weak=False)
    worker_shutdown.connect(close, weak=False)
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
