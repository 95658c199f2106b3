"""A worker stopped with SIGTERM, or killed with SIGKILL, loses no accepted job: another worker
finishes every one, and each job has exactly one recorded result."""

from __future__ import annotations

import os
import signal

import pytest
import sqlalchemy as sa

from api_shim.app import create_app
from inference_worker.cli.processes import wait_until
from inference_worker.storage.schema import inference_logs, jobs
from tests.integration.helpers import forget_workers, submit_npy


def counts(engine, job_ids):
    with engine.connect() as connection:
        statuses = dict(
            connection.execute(
                sa.select(jobs.c.status, sa.func.count())
                .where(jobs.c.job_id.in_(job_ids))
                .group_by(jobs.c.status)
            ).all()
        )
        results = connection.execute(
            sa.select(inference_logs.c.job_id, sa.func.count())
            .where(inference_logs.c.job_id.in_(job_ids))
            .group_by(inference_logs.c.job_id)
        ).all()
    return statuses, {job_id: n for job_id, n in results}


@pytest.mark.parametrize(
    "stop_signal", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"]
)
def test_no_accepted_job_is_lost_when_a_worker_stops(
    own_queue, engine, simulator, rng, stop_signal
):
    local, store, start_worker = own_queue
    client = create_app(local).test_client()
    # 192 kHz x 1 s: slow enough that jobs are still queued and one is in hand at the stop
    captures = [
        simulator.simulate(rng, sample_rate_hz=192_000.0, duration_s=1.0) for _ in range(30)
    ]

    with start_worker("first") as first:
        wait_until("the first worker", lambda: bool(store.workers()), 60, first)
        job_ids = [submit_npy(client, c).get_json()["job_id"] for c in captures]
        os.killpg(first.pid, stop_signal)  # while jobs are queued and one is in hand
        first.wait(timeout=60)
    done_before = counts(engine, job_ids)[0].get("succeeded", 0)
    forget_workers(store)  # a killed worker leaves its heartbeat behind
    with start_worker("second") as second:
        wait_until("the second worker", lambda: bool(store.workers()), 60, second)
        try:
            wait_until(
                "every job succeeded",
                lambda: counts(engine, job_ids)[0].get("succeeded", 0) == len(job_ids),
                60,
                second,
            )
        except RuntimeError:
            pass  # counted and asserted below

    statuses, results = counts(engine, job_ids)
    print(
        f"\n{stop_signal.name}: {len(job_ids)} accepted, {done_before} finished before the stop, "
        f"then {statuses}; results per job: {sorted(set(results.values()))}"
    )
    assert statuses == {"succeeded": len(job_ids)}
    assert len(results) == len(job_ids) and set(results.values()) == {1}


def test_stopping_a_worker_as_the_tools_do_lets_the_job_in_hand_finish(
    own_queue_factory, centroid_model_dir, engine, simulator, rng, tmp_path
):
    """``cli/processes.stop`` (the demo's, the benchmarks' and the tests' way to stop a worker)
    sends SIGTERM to the worker as a supervisor does: its pool finishes the job in hand, which
    is recorded once, on its first delivery, with no other worker to take it. SIGTERM to the
    whole process group killed the pool process mid-job instead."""
    from dataclasses import replace

    import numpy as np

    from inference_worker.cli.processes import stop
    from inference_worker.storage.database import JobStore
    from tests.integration.slow_model import LOUD_GAIN, write_slow_model

    slow = write_slow_model(centroid_model_dir, tmp_path / "slow-model", 2e6)  # seconds a job
    local, store, start_worker = own_queue_factory(model_dir=slow)
    client = create_app(local).test_client()
    capture = simulator.simulate(rng, sample_rate_hz=12_000.0, duration_s=0.25)
    loud = replace(capture, iq=capture.iq * np.complex64(LOUD_GAIN))
    rows = JobStore(engine)
    with start_worker("stopped") as worker:
        wait_until("the worker", lambda: bool(store.workers()), 60, worker)
        job_id = submit_npy(client, loud).get_json()["job_id"]
        wait_until(
            "the job in hand", lambda: (rows.get(job_id) or {}).get("status") == "running", 30
        )
        stop(worker)
        log = (tmp_path / "stopped.log").read_text()
    row = rows.get(job_id)
    assert row is not None and row["status"] == "succeeded", row
    assert row["attempts"] == 1
    assert "lost" not in log and "exited with 'signal 15" not in log
