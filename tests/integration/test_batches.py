"""A real worker takes a waiting queue in batches: every job recorded once, with the batch it ran
in, and a lone job is not held back for company."""

from __future__ import annotations

import os
import signal
import uuid
from dataclasses import replace

import numpy as np
import sqlalchemy as sa

from inference_worker.cli.processes import wait_until
from inference_worker.storage.schema import inference_logs
from tasks.contract import read_message
from tasks.outbox import record_job
from tests.helpers import capture_message
from tests.integration.helpers import blocked_on, hold_row, produce, wait_final_row


def produce_new_captures(local, base, count: int) -> list[str]:
    """``count`` new captures (each a tiny gain from ``base``), queued; their job ids."""
    return [
        produce(local, replace(base, iq=base.iq * np.complex64(1.0 + 1e-6 * n)))
        for n in range(count)
    ]


def test_a_waiting_queue_is_taken_in_batches_and_each_job_recorded_once(
    own_queue_factory, stores, engine, simulator, rng
):
    local, _, start_worker = own_queue_factory(worker_batch_size=8)
    jobs = stores[0]
    base = simulator.simulate(rng, sample_rate_hz=12_000.0, duration_s=0.25)
    job_ids = produce_new_captures(local, base, 30)  # all waiting before the worker starts
    with start_worker("batches", concurrency=1):
        rows = [wait_final_row(jobs, job_id) for job_id in job_ids]
        # Then one job alone, on an idle worker: it runs in a batch of one.
        lone = wait_final_row(jobs, produce(local, base))
    assert [row["status"] for row in rows] == ["succeeded"] * 30, rows
    sizes = [row["timings"]["batch_size"] for row in rows]
    assert max(sizes) > 1 and max(sizes) <= 8, sizes
    assert lone["status"] == "succeeded" and lone["timings"]["batch_size"] == 1
    with engine.connect() as connection:
        logged = connection.execute(
            sa.select(inference_logs.c.job_id, sa.func.count())
            .where(inference_logs.c.job_id.in_(job_ids))
            .group_by(inference_logs.c.job_id)
        ).all()
    assert sorted(count for _, count in logged) == [1] * 30


def batch_sizes(factory, jobs, base, count: int, concurrency: int, **settings) -> list[float]:
    """Each job's batch size when ``count`` new captures wait for a new worker of
    ``concurrency`` processes (with ``settings``); every job must succeed."""
    local, _, start_worker = factory(**settings)
    job_ids = produce_new_captures(local, base, count)
    with start_worker("sizes", concurrency=concurrency):
        rows = [wait_final_row(jobs, job_id) for job_id in job_ids]
    assert [row["status"] for row in rows] == ["succeeded"] * count, rows
    return [row["timings"]["batch_size"] for row in rows]


def test_a_burst_is_shared_between_the_worker_processes(own_queue_factory, stores, simulator, rng):
    """40 jobs waiting for a worker of two processes: whatever the order they arrive in, no
    batch holds more than half of them (the first process free no longer takes all it finds)."""
    base = simulator.simulate(rng, sample_rate_hz=12_000.0, duration_s=0.25)
    sizes = batch_sizes(own_queue_factory, stores[0], base, 40, 2, worker_batch_size=64)
    assert max(sizes) <= 20, sizes


def test_batches_of_large_captures_stay_within_the_data_budget(
    own_queue_factory, stores, simulator, rng
):
    # 12 kHz x 1 s: 288 000 bytes a capture, so a 1 MB budget holds three of them.
    base = simulator.simulate(rng, sample_rate_hz=12_000.0, duration_s=1.0)
    sizes = batch_sizes(
        own_queue_factory, stores[0], base, 12, 1, worker_batch_size=8, worker_batch_mb=1
    )
    assert max(sizes) == 3, sizes


def test_a_batch_acknowledged_at_once_never_acknowledges_an_older_job_still_running(
    own_queue_factory, stores, engine, simulator, rng
):
    """Batches are acknowledged with one ``multiple`` ack, which settles every older message of
    the channel too. The oldest job here is held in one pool process while the other runs the
    later ones in batches; that process is then killed: the held job must come back."""
    local, _, start_worker = own_queue_factory(worker_batch_size=4)
    jobs = stores[0]
    base = simulator.simulate(rng, sample_rate_hz=12_000.0, duration_s=0.25)
    held = f"held-{uuid.uuid4()}"
    record_job(jobs, read_message(capture_message(base, held, f"{local.redis_prefix}blob:{held}")))
    with engine.connect() as locker:
        holder = hold_row(locker, held)
        produce(local, base, job_id=held)  # the oldest message: the first delivery tag
        later = produce_new_captures(local, base, 12)
        with start_worker("ranges", concurrency=2) as worker:
            pids: list[int] = []

            def in_hand() -> bool:
                names = [name for _, name, _ in blocked_on(engine, holder)]
                pids.extend(int(n.rsplit(" ", 1)[1]) for n in names if "worker" in n)
                return bool(pids)

            wait_until("a pool process taking the held job", in_hand, 60, worker)
            rows = [wait_final_row(jobs, job_id) for job_id in later]
            assert [row["status"] for row in rows] == ["succeeded"] * 12, rows
            assert max(row["timings"]["batch_size"] for row in rows) > 1  # acked as batches
            os.kill(pids[0], signal.SIGKILL)  # its message goes back to the queue, if unsettled
            locker.rollback()
            row = wait_final_row(jobs, held)
    assert row["status"] == "succeeded" and row["attempts"] == 2, row
