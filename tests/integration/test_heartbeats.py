"""The heartbeats of worker and shim processes, as the health checks and the deployment check
read them: found by name, not by walking Redis's keyspace (which holds every job's result, cached
answer and capture), so a check costs the same with a million keys as with none."""

from __future__ import annotations

import uuid

import pytest

from inference_worker.cli.processes import wait_until
from inference_worker.storage.redis_store import RedisStore


@pytest.fixture
def store(stores):
    """A store of the test's own prefix (the session's keys are deleted after the session)."""
    shared: RedisStore = stores[1]
    return RedisStore(shared.client, f"{shared.prefix}beats{uuid.uuid4().hex[:6]}:")


def scans(client) -> int:
    """How many SCAN commands this Redis has run."""
    return int(client.info("commandstats").get("cmdstat_scan", {}).get("calls", 0))


def test_beats_are_read_without_walking_the_keyspace(store):
    pipeline = store.client.pipeline(transaction=False)
    for n in range(5_000):  # results and cached answers, as a busy service keeps
        pipeline.set(f"{store.prefix}result:job-{n}", "{}", ex=300)
    pipeline.execute()
    store.heartbeat("host-a:1", {"worker_id": "host-a:1"}, 30)
    store.heartbeat("host-b:2", {"worker_id": "host-b:2"}, 30)
    store.api_heartbeat("host-a:3", {"api_id": "host-a:3"}, 30)
    before = scans(store.client)
    workers = store.workers()
    apis = store.apis()
    assert scans(store.client) == before
    assert sorted(w["worker_id"] for w in workers) == ["host-a:1", "host-b:2"]
    assert [a["api_id"] for a in apis] == ["host-a:3"]


def test_a_beat_forgotten_or_expired_is_not_read_and_leaves_the_set(store):
    for worker_id, ttl_s in (("stays:1", 30), ("stops:3", 30), ("dies:2", 1)):  # shortest last
        store.heartbeat(worker_id, {"worker_id": worker_id}, ttl_s)
    store.forget_worker("stops:3")  # a clean stop
    wait_until(
        "the silent beat to expire",
        lambda: not store.client.exists(f"{store.prefix}worker:dies:2"),
        10,
    )
    assert [w["worker_id"] for w in store.workers()] == ["stays:1"]
    assert store.client.smembers(f"{store.prefix}beating:worker") == {b"stays:1"}
    store.forget_worker("stays:1")
    assert store.workers() == [] and not store.client.exists(f"{store.prefix}beating:worker")
