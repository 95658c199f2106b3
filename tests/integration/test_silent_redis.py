"""A Redis that stops answering without closing its connections (paused, behind a network that
drops packets) costs a submission one timeout of the store's, not four, and a health check one,
not two.

Before: a submission asked Redis for a cached result (a timeout, swallowed), wrote its row,
stored the capture (a second timeout), then withdrew the capture and the job's note one round
trip each (two more, each logged): 20 s before the client heard 503, a shim thread held as long.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import redis

from api_shim import infra
from api_shim.app import create_app
from inference_worker.api_keys import ApiKey
from inference_worker.cli.processes import wait_until
from inference_worker.storage.database import JobStore
from inference_worker.storage.redis_silence import breaker_for
from inference_worker.storage.redis_store import connect
from tests.integration.helpers import private_redis, submit_npy


@contextmanager
def paused(redis_url: str) -> Iterator[None]:
    """The Redis at ``redis_url`` stopped (``SIGSTOP``): it keeps its connections and answers
    nothing until the block ends."""
    pid = int(redis.Redis.from_url(redis_url).info("server")["process_id"])
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@pytest.fixture
def shim_on_own_redis(own_queue_factory, tmp_path: Path):
    with private_redis(tmp_path / "redis") as redis_url:
        local, _, _ = own_queue_factory(redis_url=redis_url)
        app = create_app(local)
        try:
            yield app, redis_url
        finally:
            app.extensions["heimdall"].jobs.engine.dispose()
            app.extensions["heimdall"].store.client.close()


def count_round_trips(app, monkeypatch) -> list[str]:
    """The Redis commands (and pipelines) the shim's store sends from now on."""
    client = app.extensions["heimdall"].store.client
    sent: list[str] = []
    execute, pipeline = client.execute_command, client.pipeline

    def command(*args, **options):
        sent.append(str(args[0]))
        return execute(*args, **options)

    def counted_pipeline(*args, **options):
        made = pipeline(*args, **options)
        run = made.execute

        def counted(*more, **also):
            sent.append("pipeline")
            return run(*more, **also)

        made.execute = counted
        return made

    monkeypatch.setattr(client, "execute_command", command)
    monkeypatch.setattr(client, "pipeline", counted_pipeline)
    return sent


@pytest.mark.parametrize("model", [None, "champion"], ids=["cache-read", "named-model"])
def test_a_silent_redis_costs_a_submission_one_wait(
    shim_on_own_redis, engine, capture, monkeypatch, caplog, model
):
    """Whether the submission reads the result cache first (the champion's jobs) or not (a job
    naming its model), Redis is waited on once; the 503 names Redis, no row is left, and one
    line says so (the withdrawal of what Redis may hold is not attempted: it expires)."""
    app, redis_url = shim_on_own_redis
    client = app.test_client()
    asked = {} if model is None else {"model": model}
    warm = submit_npy(client, capture, **asked)
    assert warm.status_code == 202, warm.get_json()
    sent = count_round_trips(app, monkeypatch)
    other = replace(capture, iq=capture.iq * np.complex64(1.0 + 1e-4))
    job_id = f"silent-redis-{model or 'cache'}"
    with paused(redis_url), caplog.at_level("WARNING"):
        refused = submit_npy(client, other, job_id=job_id, **asked)
    assert refused.status_code == 503, refused.get_json()
    assert refused.get_json()["error"]["message"] == "Redis is unavailable; retry later"
    assert JobStore(engine).get(job_id) is None
    assert len(sent) == 1, sent
    said = [r.getMessage() for r in caplog.records if job_id in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"could not accept job {job_id}, Redis"), said
    # Redis back: accepted as new once the window after its silence has passed (5 s)
    answers: list[int] = []

    def accepted() -> bool:
        answers.append(submit_npy(client, other, job_id=job_id, **asked).status_code)
        return answers[-1] == 202

    wait_until("the submission accepted", accepted, 20)
    assert set(answers[:-1]) <= {503}


def test_health_waits_on_a_silent_redis_once_and_says_so(shim_on_own_redis, monkeypatch):
    """``/health`` asked Redis again for the workers' heartbeats after its ping had timed out
    (10 s in all); ``/health/model`` answered such a Redis with a 500. The ping waited the
    socket timeout, 5 s, where the other stores' checks wait 2 (``HEALTH_STORE_S``)."""
    app, redis_url = shim_on_own_redis
    client = app.test_client()
    assert client.get("/health").get_json()["checks"]["redis"]["ok"] is True
    sent = count_round_trips(app, monkeypatch)
    monkeypatch.setattr(infra, "HEALTH_STORE_S", 0.5)
    with paused(redis_url):
        health = client.get("/health")
        assert sent == [], sent  # the heartbeats are not asked for after the ping went unanswered
        model = client.get("/health/model")
    assert health.status_code == 503
    checks = health.get_json()["checks"]
    assert checks["redis"] == {
        "ok": False,
        "error": "TimeoutError: Redis did not answer PING in 0.5 s",
    }
    assert checks["model"] == {
        "ok": False,
        "error": "cannot read worker heartbeats: Redis did not answer",
        "workers": [],
    }
    assert model.status_code == 503, model.get_json()
    [problem] = model.get_json()["problems"]
    assert problem.startswith("cannot read worker heartbeats: TimeoutError")


@pytest.mark.timeout(120)
def test_after_one_wait_requests_that_can_answer_without_redis_do_so_at_once(
    own_queue_factory, tmp_path: Path, capture
):
    """Each request waited out Redis's silence anew — a rate limit checked with no read timeout
    at all (a keyed request then never answered), a poll's cache read, a health check's ping —
    and an endpoint that met the timeout unhandled answered 500. Now the first call to time out
    opens a window in which the others fail at once: a poll answers from PostgreSQL, health and
    the registry listing say Redis is unavailable, without waiting."""
    key = "ops-" + uuid.uuid4().hex
    with private_redis(tmp_path / "redis") as redis_url:
        local, _, _ = own_queue_factory(
            redis_url=redis_url, api_keys=[ApiKey(name="ops", key=key, role="admin")]
        )
        app = create_app(local)
        client, headers = app.test_client(), {"Authorization": f"Bearer {key}"}
        try:
            warm = submit_npy(client, capture, headers=headers)
            assert warm.status_code == 202, warm.get_json()
            other = replace(capture, iq=capture.iq * np.complex64(1.0 + 1e-4))
            with paused(redis_url):
                refused = submit_npy(client, other, headers=headers)  # meets the silence
                polled = client.get(f"/jobs/{warm.get_json()['job_id']}", headers=headers)
                health = client.get("/health", headers=headers)
                models = client.get("/models", headers=headers)
        finally:
            app.extensions["heimdall"].jobs.engine.dispose()
            app.extensions["heimdall"].store.client.close()
    assert refused.status_code == 503, refused.get_json()
    assert polled.status_code == 200 and polled.get_json()["status"] == "queued"
    redis_check = health.get_json()["checks"]["redis"]
    assert "Redis did not answer" in redis_check["error"], redis_check  # failed, not waited
    assert models.status_code == 503, models.get_json()
    assert models.get_json()["error"]["message"] == "Redis is unavailable"


def test_a_process_with_no_connection_left_reaches_redis_again_after_a_silence(tmp_path: Path):
    """redis-py connects, and checks a new connection's health, within the call that tries
    Redis again after a silence; the breaker refused those inner calls as it refuses others
    while a call is trying, so that call failed, and the next one, and so on: a process with
    no live connection left (dropped at their timeouts, or new in a worker process forked
    meanwhile) never reached Redis again — 742 jobs stuck in a soak with faults."""
    with private_redis(tmp_path / "redis") as redis_url:
        first = connect(redis_url)
        first.ping()
        with paused(redis_url), pytest.raises(redis.exceptions.TimeoutError):
            first.get("k")  # the socket timeout: the window closes, the connection is dropped
        window = breaker_for(redis_url).window
        wait_until("the window's end", lambda: window.clock() >= window.closed_until, 20)
        fresh = connect(redis_url)  # connections of its own, none made yet
        assert fresh.get("k") is None
        assert first.get("k") is None
        fresh.close()
        first.close()
