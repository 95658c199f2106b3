"""A message that keeps killing the worker process running it stops being redelivered: after
the queue's delivery limit it goes to the dead-letter queue, its job is recorded as failed with
the reason, and the worker keeps serving."""

from __future__ import annotations

import os
import signal
import time

import kombu
import pytest
import sqlalchemy as sa

from api_shim.app import create_app
from inference_worker.cli.processes import wait_until
from inference_worker.storage.database import JobStore
from inference_worker.storage.job_sql import START_MANY
from inference_worker.storage.pooled import prepared_form
from inference_worker.storage.schema import inference_logs
from tasks.app import QueueMismatch, declare_queues, inference_queue
from tests.integration.helpers import blocked_on, hold_row, job_row, submit_npy, wait_final
from tests.integration.shim_processes import child_pids

DELIVERY_LIMIT = 2
STARTING = f"EXECUTE {prepared_form(START_MANY).name}("


def test_a_message_that_keeps_killing_workers_is_dead_lettered_and_its_job_fails(
    own_queue_factory, engine, capture
):
    local, store, start_worker = own_queue_factory(max_deliveries=DELIVERY_LIMIT)
    client = create_app(local).test_client()
    job_id = submit_npy(client, capture).get_json()["job_id"]  # queued; no worker yet
    jobs = JobStore(engine)
    wait_until(
        "the job marked published", lambda: job_row(jobs, job_id)["published_at"] is not None, 10
    )

    kills = 0
    with engine.connect() as locker, start_worker("poisoned") as worker:
        # Hold the job's row: every worker that takes the job blocks on it in PostgreSQL, so
        # the job is in hand at a known moment, and we kill that process as a crash would.
        holder = hold_row(locker, job_id)
        seen: set[int] = set()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            waiting = blocked_on(engine, holder)
            # A batch's start (JobStore.start_many, an upsert of the job's row), run as the
            # prepared statement it is on the worker's connections
            takes = [pid for pid, _, query in waiting if query.startswith(STARTING)]
            if any("status='failed'" in query for _, _, query in waiting):
                break  # the dead-letter consumer is failing the job: let it
            fresh = [pid for pid in takes if pid not in seen]
            if fresh:
                seen.update(fresh)
                for child in child_pids(worker.pid):
                    os.kill(child, signal.SIGKILL)
                kills += 1
            time.sleep(0.05)
        locker.rollback()  # release the row

        row = wait_final(client, job_id)
        print(f"\n{kills} deliveries killed their worker process; then: {row['error']}")
        assert row["status"] == "failed"
        assert "deliveries" in row["error"] and "dead-letter" in row["error"]
        assert kills == DELIVERY_LIMIT + 1
        with engine.connect() as connection:
            results = connection.execute(
                sa.select(sa.func.count()).where(inference_logs.c.job_id == job_id)
            ).scalar_one()
        assert results == 0

        # The worker is still up and serves the next job; the dead-letter queue is empty.
        assert worker.poll() is None
        wait_until("a fresh pool process", lambda: bool(child_pids(worker.pid)), 30, worker)
        after = submit_npy(client, capture).get_json()["job_id"]
        assert wait_final(client, after)["status"] == "succeeded"
    with kombu.Connection(local.broker_url) as connection:
        dead = connection.default_channel.queue_declare(f"{local.queue}.dead", passive=True)
    assert dead.message_count == 0


def declare_classic(connection: kombu.Connection, name: str) -> None:
    """The queue as a release before the quorum queue declared it."""
    kombu.Queue(name, kombu.Exchange(name, "direct"), routing_key=name)(
        connection.default_channel
    ).declare()


def declare_other_limit(connection: kombu.Connection, name: str) -> None:
    """The quorum queue as it was before ``HEIMDALL_MAX_DELIVERIES`` changed (a quorum queue
    takes no conditional delete: the broker closed the connection that asked for one, and
    every start ended in a traceback)."""
    declare_queues(connection, name, 5)


OLDER_QUEUES = pytest.mark.parametrize(
    "declare_older", [declare_classic, declare_other_limit], ids=["classic", "other-limit"]
)


@pytest.fixture
def queue_of_this_test(settings, request):
    """A connection and a queue name of this test's own; the queue, its dead-letter queue and
    its exchange are deleted afterwards."""
    name = f"{settings.queue}.{request.node.callspec.id}"
    with kombu.Connection(settings.broker_url) as connection:
        try:
            yield connection, name
        finally:
            connection.default_channel.queue_delete(name)
            connection.default_channel.queue_delete(f"{name}.dead")
            connection.default_channel.exchange_delete(name)


@OLDER_QUEUES
def test_an_empty_queue_of_other_arguments_is_replaced(queue_of_this_test, declare_older):
    connection, name = queue_of_this_test
    declare_older(connection, name)
    declare_queues(connection, name, 7)
    # Declaring again with the arguments asked for now agrees with what is there, on the same
    # connection: the replacement did not spend it.
    inference_queue(name, 7)(connection.default_channel).declare()


@OLDER_QUEUES
def test_a_queue_of_other_arguments_that_holds_messages_is_left_alone(
    queue_of_this_test, declare_older
):
    connection, name = queue_of_this_test
    declare_older(connection, name)
    connection.Producer().publish({"x": 1}, exchange=name, routing_key=name)

    def held() -> int:  # a quorum queue counts the message once its log has it
        channel = connection.channel()
        try:
            return int(channel.queue_declare(name, passive=True).message_count)
        finally:
            channel.close()

    wait_until("the message in the queue", lambda: held() == 1, 30)
    with pytest.raises(QueueMismatch, match="1 message"):
        declare_queues(connection, name, 7)
    assert held() == 1
