"""Celery app factory with the service's reliability settings; producers and workers share it."""

from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue

from tasks.contract import TASK_NAME

PUBLISH_RETRY_POLICY = {
    # Give the broker ~3 s to come back before a submission is answered with 503.
    "max_retries": 4,
    "interval_start": 0.1,
    "interval_step": 0.4,
    "interval_max": 1.0,
}


def create_celery(broker_url: str, queue: str, *, main: str = "heimdall") -> Celery:
    """A Celery app bound to ``broker_url`` that routes inference tasks to ``queue``.

    JSON only (pickle is never accepted), late acks with requeue when a worker dies, prefetch 1,
    a durable queue, persistent messages and publisher confirms. Results are not kept by Celery:
    the worker writes them to PostgreSQL and Redis itself.
    """
    app = Celery(main, set_as_current=False)
    exchange = Exchange(queue, type="direct", durable=True)
    app.conf.update(
        broker_url=broker_url,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"confirm_publish": True},
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_default_delivery_mode="persistent",
        task_publish_retry=True,
        task_publish_retry_policy=PUBLISH_RETRY_POLICY,
        worker_prefetch_multiplier=1,
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_queues=[Queue(queue, exchange, routing_key=queue, durable=True)],
        task_default_queue=queue,
        task_default_exchange=queue,
        task_default_routing_key=queue,
        task_routes={TASK_NAME: {"queue": queue, "routing_key": queue}},
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    return app
