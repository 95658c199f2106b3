"""Celery app factory with the service's reliability settings; producers and workers share it.

The inference queue is a RabbitMQ *quorum* queue: replicated where the cluster has several nodes,
durable, with a delivery limit. A message whose deliveries keep ending without an answer (the
worker process running it dies, or loses its connection) is moved to the dead-letter queue
``<queue>.dead`` after ``delivery_limit`` returns; workers consume that queue and record the job
as failed with the reason (see :mod:`inference_worker.serving.dead_letters`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import amqp.exceptions
import kombu
from celery import Celery
from celery.utils.nodenames import anon_nodename
from kombu import Exchange, Queue

from tasks.alarm import BrokerAlarm, BrokerBlocked
from tasks.broker_silence import PUBLISH_RETRY_POLICY, publishing_to
from tasks.contract import TASK_NAME, LocateMessage

log = logging.getLogger(__name__)

DEFAULT_DELIVERY_LIMIT = 5


class QueueMismatch(RuntimeError):
    """The queue exists on the broker with other arguments and still holds messages."""


class Unroutable(kombu.exceptions.KombuError):
    """RabbitMQ had no queue to route a task to, even after the queue was declared again."""


def dead_letter_queue_name(queue: str) -> str:
    return f"{queue}.dead"


def inference_queue(queue: str, delivery_limit: int = DEFAULT_DELIVERY_LIMIT) -> Queue:
    """The durable quorum queue of inference tasks, dead-lettering to ``<queue>.dead``."""
    return Queue(
        queue,
        Exchange(queue, type="direct", durable=True),
        routing_key=queue,
        durable=True,
        queue_arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": delivery_limit,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dead_letter_queue_name(queue),
            # At-least-once dead-lettering: a message leaves the queue only once the dead-letter
            # queue has confirmed it (RabbitMQ requires reject-publish overflow for that).
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        },
    )


def dead_letter_queue(queue: str) -> Queue:
    name = dead_letter_queue_name(queue)
    return Queue(
        name,
        Exchange("", type="direct"),
        routing_key=name,
        durable=True,
        queue_arguments={"x-queue-type": "quorum"},
    )


def declare_queues(
    connection: kombu.Connection, queue: str, delivery_limit: int = DEFAULT_DELIVERY_LIMIT
) -> None:
    """Declare the inference queue and its dead-letter queue.

    An empty queue of the same name declared with other arguments (a classic queue of an older
    release, another delivery limit) is replaced. One that still holds messages is left alone.

    Raises:
        QueueMismatch: the queue exists with other arguments and holds messages.
    """
    dead = dead_letter_queue(queue)
    dead(connection.default_channel).declare()
    wanted = inference_queue(queue, delivery_limit)
    try:
        wanted(connection.default_channel).declare()
        return
    except amqp.exceptions.PreconditionFailed:
        pass  # the broker closed the channel; ask on a fresh one what is there
    _delete_if_idle(connection, queue)
    log.warning(
        "replaced the empty queue %r by a quorum queue with a delivery limit of %d",
        queue,
        delivery_limit,
    )
    wanted(connection.default_channel).declare()


def _delete_if_idle(connection: kombu.Connection, queue: str) -> None:
    """Delete ``queue`` if it holds no message and has no consumer.

    A classic queue is deleted on those conditions by the broker. A quorum queue (one of
    another delivery limit) takes neither condition — the broker closes the connection that
    asks — so it is deleted right after a check that it is idle: a publish in between would be
    lost with it, so its publishers are expected to be stopped, as for any change of its
    arguments. Each attempt has a connection of its own, so ``connection`` stays usable.

    Raises:
        QueueMismatch: the queue holds messages or has consumers.
    """
    for conditional in (True, False):
        with connection.clone() as own:
            channel = own.channel()
            _, messages, consumers = channel.queue_declare(queue, passive=True)
            if messages or consumers:
                raise QueueMismatch(
                    f"queue {queue!r} exists on the broker with other arguments (an older "
                    f"classic queue, or another delivery limit) and has {messages} message(s) "
                    f"and {consumers} consumer(s). Let the workers of the older release drain "
                    f"it, stop them, then delete it (rabbitmqctl delete_queue {queue}) and "
                    "start again."
                )
            try:
                if conditional:
                    channel.queue_delete(queue, if_empty=True, if_unused=True)
                else:
                    channel.queue_delete(queue)
                return
            except amqp.exceptions.AMQPNotImplementedError:  # a quorum queue
                continue


class HeimdallCelery(Celery):
    """Celery whose ``close`` closes its pool's broker connections with the handshake RabbitMQ
    expects. Celery's own only forgets them, to be dropped later: RabbitMQ logged "client
    unexpectedly closed TCP connection" at every stop of a process that had published."""

    close_timeout_s = 1.0  # how long each connection waits for the broker's answer

    def close(self) -> None:
        """While the broker blocks publishing (:func:`broker_alarm`) it reads nothing: the
        connections are then dropped without a word."""
        blocked = broker_alarm(self).reason is not None

        def close(connection: object) -> None:
            if not isinstance(connection, kombu.Connection):
                return  # a place in the pool never filled
            if connection.connected and not blocked:
                try:
                    connection.connection.transport.sock.settimeout(self.close_timeout_s)
                    connection.close()  # not release: a pooled connection's goes back
                    return
                except OSError:  # its socket already gone: nothing to say goodbye on
                    pass
            connection.collect()

        pool = self.pool
        pool.collect_resource = close  # this pool only: its own collect drops each connection
        pool.force_close_all()
        super().close()


def create_celery(
    broker_url: str,
    queue: str,
    *,
    delivery_limit: int = DEFAULT_DELIVERY_LIMIT,
    main: str = "heimdall",
) -> Celery:
    """A Celery app bound to ``broker_url`` that routes inference tasks to ``queue``.

    JSON only (nothing else is accepted), late acks with requeue when a worker dies, prefetch 1
    (the worker raises it to fill its batches), a durable quorum queue with a delivery limit and
    a dead-letter queue, persistent messages and publisher confirms. Results are not kept by
    Celery: the worker writes them to PostgreSQL and Redis itself. Its ``close`` says goodbye
    to the broker (:class:`HeimdallCelery`).
    """
    app = HeimdallCelery(main, set_as_current=False)
    alarm = BrokerAlarm(broker_url)
    app.conf.update(
        broker_url=broker_url,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a worker waits for the broker, however long
        broker_transport_options={
            "confirm_publish": True,
            # Every connection says when RabbitMQ blocks it (a memory or disk alarm), so that a
            # publish stops waiting for a confirm that comes only once the alarm clears.
            "on_blocked": alarm.heard_blocked,
            "on_unblocked": alarm.heard_unblocked,
        },
        heimdall_broker_alarm=alarm,
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # A task that raises is rejected (dead-lettered, its job then failed with the reason),
        # never acknowledged as if it had been handled.
        task_acks_on_failure_or_timeout=False,
        # A job past its hard time limit has been failed with the reason by the worker's main
        # process (see inference_worker.serving.worker): acknowledge it rather than deliver it
        # again into the same limit.
        task_acks_on_timeout=True,
        task_default_delivery_mode="persistent",
        task_publish_retry=True,
        task_publish_retry_policy=PUBLISH_RETRY_POLICY,
        worker_prefetch_multiplier=1,
        # A job in hand when the broker connection drops is delivered again on the new
        # connection; the job store records one result whichever copy finishes first.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # Task events cost the worker three publishes a job (with confirms): off unless a monitor
        # asks. Flower turns them on in the workers it watches (its enable_events option).
        worker_send_task_events=False,
        task_send_sent_event=False,
        task_queues=[inference_queue(queue, delivery_limit)],
        task_default_queue=queue,
        task_default_exchange=queue,
        task_default_routing_key=queue,
        task_routes={TASK_NAME: {"queue": queue, "routing_key": queue}},
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    return app


def broker_alarm(app: Celery) -> BrokerAlarm:
    """What the process's connections of ``app`` (made by :func:`create_celery`) heard of
    RabbitMQ's resource alarms."""
    alarm: BrokerAlarm = app.conf.heimdall_broker_alarm
    return alarm


def publisher(
    app: Celery, queue: str, confirm_timeout_s: float = 5.0
) -> Callable[[LocateMessage], None]:
    """Publish a task message on ``queue`` (persistent, with publisher confirms, waiting at most
    ``confirm_timeout_s`` for the confirm); the message's job id is the task id, so Flower and
    the broker's tools name tasks by job.

    The message is Celery's task protocol 2, built here rather than by ``send_task``: the same
    headers and body, without the generic argument checks and ``repr`` of the arguments that
    cost a submission more CPU than the publish itself. It retries like ``send_task`` would
    (``PUBLISH_RETRY_POLICY``) and declares the queue once per connection. It publishes as
    mandatory: a task RabbitMQ returns unrouted (the queue deleted since) makes it declare the
    queue again and publish once more.

    While RabbitMQ blocks publishing (a memory or disk alarm) it refuses at once rather than
    wait for a confirm that comes only when the alarm clears (:mod:`tasks.alarm`); after the
    broker did not answer in time, for a while (:mod:`tasks.broker_silence`).

    Raises:
        Unroutable: the task came back a second time.
        BrokerBlocked: RabbitMQ blocks publishing; ``sent`` says whether the message had been
            written (it is then delivered once the alarm clears, unconfirmed).
    """
    origin = anon_nodename()
    alarm = broker_alarm(app)
    queues = list(app.conf.task_queues or ())
    returned: set[str] = set()
    """Job ids of tasks RabbitMQ returned unrouted (the publishing threads share the set)."""

    def on_return(_: Exception, exchange: str, routing_key: str, message: Any) -> None:
        # Called while the publish waits for its confirm: a return comes before the ack.
        returned.add(message.properties.get("correlation_id", ""))

    def publish(message: LocateMessage) -> None:
        job_id = message.job_id
        headers = {
            "lang": "py",
            "task": TASK_NAME,
            "id": job_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": job_id,
            "parent_id": None,
            "argsrepr": f"[job {job_id}]",
            "kwargsrepr": "{}",
            "origin": origin,
            "ignore_result": True,
        }
        body: tuple[list[Any], dict[str, Any], dict[str, Any]] = (
            [message.to_json()],
            {},
            {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
        )
        returned.discard(job_id)  # left by an earlier publish of this job that then failed
        alarm.check()
        with publishing_to(app.conf.broker_url), app.producer_or_acquire() as producer:
            # Heard on this channel, and on any a reconnection inside the publish opens
            # (kombu adds a producer's ``on_return`` to each channel it revives on).
            producer.on_return = on_return
            producer.channel.events["basic_return"].add(on_return)
            for _ in range(2):
                # Declared once per connection (kombu remembers), without binding a copy of the
                # queue to the channel on every publish as a declare list would.
                known = producer.connection.declared_entities
                declare = [q for q in queues if hash(q) not in known]
                try:
                    alarm.listen(producer.connection)
                    with alarm.publishing():
                        producer.publish(
                            body,
                            exchange=queue,
                            routing_key=queue,
                            serializer="json",
                            headers=headers,
                            correlation_id=job_id,
                            reply_to="",
                            delivery_mode=2,
                            # Unroutable (the queue deleted since this connection declared
                            # it): returned rather than confirmed and dropped, which would
                            # leave a job no one runs.
                            mandatory=True,
                            declare=declare,
                            retry=True,
                            retry_policy=PUBLISH_RETRY_POLICY,
                            confirm_timeout=confirm_timeout_s,
                        )
                except BrokerBlocked:
                    # RabbitMQ reads nothing more from this connection until the alarm clears:
                    # closing it would wait that long for the handshake, and a confirm it still
                    # waits for would be taken by a later publish for its own. Drop it.
                    producer.connection.collect()
                    raise
                if job_id not in returned:
                    return
                returned.discard(job_id)
                log.warning(
                    "task of job %s was returned unrouted; declaring %r again", job_id, queue
                )
                known.difference_update(hash(q) for q in queues)
        raise Unroutable(f"RabbitMQ has no queue {queue!r} to route the job to")

    return publish
