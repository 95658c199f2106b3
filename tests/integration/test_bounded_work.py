"""Bounded work: a job past its time limit fails with the reason and the worker serves on; a full
Redis refuses submissions cleanly and still lets accepted jobs finish, and one that would evict
waiting captures instead is named at start."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest
import redis

from api_shim.app import create_app
from inference_worker.cli.processes import wait_until
from inference_worker.storage.database import JobStore
from inference_worker.storage.reachability import probe_redis
from tests.integration.helpers import (
    private_redis,
    queue_consumers,
    submit_npy,
    wait_final,
    wait_final_row,
)
from tests.integration.slow_model import LOUD_GAIN, write_slow_model


@pytest.mark.parametrize(
    ("limits", "spin_per_unit", "expected"),
    [
        # about 3 s of spinning in onnxruntime here (6e5 a unit took ~1 s, a coin flip against
        # the 1 s limit): the soft limit stops the job once it returns
        ({"task_soft_time_limit_s": 1.0, "task_time_limit_s": 60.0}, 2e6, "the job time limit"),
        # minutes of spinning, no soft limit: the pool replaces the process at the hard limit
        ({"task_soft_time_limit_s": 0.0, "task_time_limit_s": 2.0}, 1e8, "the hard job time limit"),
    ],
    ids=["soft-limit", "hard-limit"],
)
def test_a_job_past_its_time_limit_fails_with_the_reason_and_the_worker_serves_the_next(
    own_queue_factory, centroid_model_dir, simulator, rng, tmp_path, limits, spin_per_unit, expected
):
    slow = write_slow_model(centroid_model_dir, tmp_path / "slow-model", spin_per_unit)
    local, store, start_worker = own_queue_factory(model_dir=slow, **limits)
    client = create_app(local).test_client()
    capture = simulator.simulate(rng, sample_rate_hz=12_000.0, duration_s=0.25)
    loud = replace(capture, iq=capture.iq * np.complex64(LOUD_GAIN))
    with start_worker("limits") as worker:
        wait_until("the worker", lambda: bool(store.workers()), 60, worker)
        started = time.monotonic()
        slow_job = submit_npy(client, loud).get_json()["job_id"]
        view = wait_final(client, slow_job)
        elapsed = time.monotonic() - started
        after = wait_final(client, submit_npy(client, capture).get_json()["job_id"])
        assert worker.poll() is None
    print(f"\n{expected}: failed {elapsed:.1f} s after submission: {view['error']}")
    assert view["status"] == "failed" and expected in view["error"], view
    assert after["status"] == "succeeded", after
    assert wait_final(client, slow_job)["attempts"] == 1  # not delivered again


@pytest.mark.parametrize(
    ("options", "warned"),
    [
        (("--maxmemory", "4mb", "--maxmemory-policy", "allkeys-lru"), True),
        (("--maxmemory", "4mb", "--maxmemory-policy", "volatile-ttl"), True),  # captures have TTLs
        (("--maxmemory", "4mb", "--maxmemory-policy", "noeviction"), False),
        (("--maxmemory", "0", "--maxmemory-policy", "allkeys-lru"), False),  # never full
    ],
)
def test_a_redis_that_would_evict_waiting_captures_is_named_at_start(
    tmp_path, caplog, options, warned
):
    """Every command checks Redis before it serves; one that evicts keys when full would drop a
    waiting capture (its job then fails) where it must refuse new work."""
    with private_redis(tmp_path, *options) as url, caplog.at_level("WARNING"):
        probe_redis(url)
    warnings = [r.getMessage() for r in caplog.records if "evicts keys" in r.getMessage()]
    assert bool(warnings) == warned, warnings
    if warned:
        assert "run it with maxmemory-policy noeviction" in warnings[0]


@pytest.fixture
def small_redis(tmp_path):
    """A Redis of this test's own, 4 MB at most and refusing writes when full."""
    with private_redis(tmp_path, "--maxmemory", "4mb", "--maxmemory-policy", "noeviction") as url:
        yield url


def test_a_full_redis_refuses_submissions_cleanly_and_accepted_jobs_still_finish(
    own_queue_factory, small_redis, engine, simulator, rng
):
    local, _, start_worker = own_queue_factory(redis_url=small_redis)
    client = create_app(local).test_client()
    jobs = JobStore(engine)
    capture = simulator.simulate(rng, sample_rate_hz=12_000.0, duration_s=1.0)
    accepted, refusal = [], None
    for n in range(60):  # each capture holds 288 kB in Redis until a worker takes it
        variant = replace(capture, iq=capture.iq * np.complex64(1.0 + 1e-6 * n))
        response = submit_npy(client, variant, job_id=f"full-{n}")
        if response.status_code != 202:
            refusal = (f"full-{n}", response)
            break
        accepted.append(f"full-{n}")
    assert refusal is not None, "Redis never filled up"
    refused_id, response = refusal
    print(f"\n{len(accepted)} captures accepted, then: {response.get_json()['error']}")
    assert (
        response.status_code == 503 and "Redis is full" in response.get_json()["error"]["message"]
    )
    # Nothing is left of the refused submission
    assert jobs.get(refused_id) is None
    assert not redis.Redis.from_url(small_redis).keys(f"{local.redis_prefix}blob:{refused_id}:*")

    with start_worker("full") as worker:
        wait_until(
            "the worker's consumer",
            lambda: queue_consumers(local.broker_url, local.queue) > 0,
            60,
            worker,
        )
        finals = [wait_final_row(jobs, job_id) for job_id in accepted]
        assert [row["status"] for row in finals] == ["succeeded"] * len(accepted)
        # The captures it consumed made room: submissions are accepted again
        again = submit_npy(client, capture, job_id=refused_id)
        assert again.status_code == 202, again.get_json()
        assert wait_final_row(jobs, refused_id)["status"] == "succeeded"
