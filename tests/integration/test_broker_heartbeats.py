"""A worker whose RabbitMQ stops answering (a stalled host, a cut network: nothing closes the
connection) is given up on by both sides after about two AMQP heartbeats, and the jobs it had
been sent go to other workers. With Celery's heartbeat (120 s, lowered to RabbitMQ's 60) the
broker held such a worker's jobs for 177 s; with ``HEIMDALL_BROKER_HEARTBEAT_S`` (10 s) about
twenty-five. The broker is the real one, reached through a relay that goes silent
(:class:`~tools.silent_relay.SilentProxy`)."""

from __future__ import annotations

import time

import pytest

from inference_worker.cli.processes import wait_until
from inference_worker.storage.database import JobStore
from tests.integration.helpers import broker_through, produce, queue_consumers, wait_final_row


@pytest.mark.timeout(240, method="thread")
def test_jobs_sent_to_a_worker_cut_off_from_its_broker_go_to_another_soon(
    own_queue_factory, broker_relay, settings, engine, capture, tmp_path
):
    cut_off, _, start_cut_off = own_queue_factory(broker_url=broker_through(settings, broker_relay))
    # the same queue and Redis keys, on the broker itself
    direct, _, start_direct = own_queue_factory(
        queue=cut_off.queue, redis_prefix=cut_off.redis_prefix
    )

    def consumers() -> int:
        return queue_consumers(settings.broker_url, cut_off.queue)

    with start_cut_off("cut-off"):
        wait_until("the worker consumes", lambda: consumers() == 1, 60)
        with broker_relay.silent():
            job_id = produce(direct, capture)  # delivered to the worker cut off: it may take more
            silent_since = time.monotonic()
            with start_direct("direct"):
                done = wait_final_row(JobStore(engine), job_id, 75)
                took = time.monotonic() - silent_since
            log = (tmp_path / "cut-off.log").read_text()
    assert done["status"] == "succeeded", done["error"]
    print(f"the job succeeded {took:.1f} s after the broker went silent")
    assert "Too many heartbeats missed" in log, "the worker cut off did not give its broker up"
    # Celery's warning of a setting's coming default, set here (tasks/app.py): not repeated
    assert "optional breaking change" not in log
