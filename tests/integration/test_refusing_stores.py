"""Services in a passing state that refuse work — a Redis replica until a failover promotes it,
a replica whose primary is gone, a Redis that cannot save to disk, a PostgreSQL that takes no
writes, a queue at its length limit — are a service unavailable, as one that is down: a 503 and
nothing kept at the shim, retries and a batch handed back in a worker, never a 500 or a job
failed for it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
import uuid
from dataclasses import replace
from typing import Any

import kombu
import numpy as np
import pytest
import redis
import sqlalchemy as sa

from api_shim.app import create_app
from inference_worker.cli.processes import wait_until
from inference_worker.storage.database import JobStore
from tests.helpers import capture_query, npy_bytes
from tests.integration.helpers import (
    free_port,
    private_redis,
    submit_npy,
    wait_final,
    worker_env,
)


@pytest.fixture
def read_only_redis(tmp_path):
    """A replica (of a Redis of this test's own): it answers reads and refuses writes."""
    with private_redis(tmp_path / "primary") as primary:
        replica_of = ("--replicaof", "127.0.0.1", primary.rsplit(":", 1)[1].split("/")[0])
        with private_redis(tmp_path / "replica", *replica_of) as replica:
            yield replica


@pytest.fixture
def masterless_redis(tmp_path):
    """A replica whose primary is gone, set not to serve stale data: it answers MASTERDOWN."""
    gone = str(free_port())
    options = ("--replicaof", "127.0.0.1", gone, "--replica-serve-stale-data", "no")
    with private_redis(tmp_path, *options) as replica:
        yield replica


@pytest.fixture
def redis_that_cannot_persist(tmp_path):
    """A Redis set to snapshot to a folder that is then removed, and a function that makes its
    next snapshot fail: from then on it answers writes with MISCONF (its default
    ``stop-writes-on-bgsave-error``), as when its disk is full or unwritable."""
    folder = tmp_path / "snapshots"
    with private_redis(folder, "--save", "3600 1") as url:
        client = redis.Redis.from_url(url)

        def break_persistence() -> None:
            shutil.rmtree(folder)
            client.bgsave()
            wait_until(
                "the snapshot failed",
                lambda: client.info("persistence")["rdb_last_bgsave_status"] == "err",
                30,
            )

        try:
            yield url, client, break_persistence
        finally:  # no snapshot at shutdown either: it would fail, and Redis would not stop
            client.config_set("save", "")
            client.close()


def refused_submissions(client) -> float:
    """The shim's count of submissions answered 503 (``HeimdallSubmissionsRefused`` reads it)."""
    metric = 'heimdall_submission_seconds_count{endpoint="predict",status="503"}'
    for line in client.get("/metrics").get_data(as_text=True).splitlines():
        if line.startswith(metric):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def worker_retries(worker) -> float:
    """The worker's ``heimdall_store_retries_total{store="redis"}`` (what the alert on waiting
    workers reads), summed over its processes."""
    url = f"http://127.0.0.1:{worker.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    metric = 'heimdall_store_retries_total{store="redis"}'
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(metric)
    )


def test_a_redis_that_cannot_persist_is_a_store_unavailable_and_loses_nothing(
    own_queue_factory, redis_that_cannot_persist, engine, capture, tmp_path
):
    """MISCONF was an internal error: the shim answered 500 and a worker failed the jobs it held.
    Now a submission is a 503 that keeps nothing, and a job accepted before waits in the queue
    (the worker retries, then hands it back) until Redis takes writes again."""
    url, redis_client, break_persistence = redis_that_cannot_persist
    local, _, start_worker = own_queue_factory(redis_url=url)
    app = create_app(local)
    client = app.test_client()
    accepted = submit_npy(client, capture, job_id="persist-1")
    assert accepted.status_code == 202, accepted.get_json()
    break_persistence()

    refusals_before = refused_submissions(client)
    refused = submit_npy(client, capture, job_id="persist-2")
    assert refused.status_code == 503, refused.get_json()
    assert refused.get_json()["error"]["message"].startswith("Redis is unavailable")
    assert JobStore(engine).get("persist-2") is None
    assert refused_submissions(client) == refusals_before + 1  # what the refusals alert reads

    log = tmp_path / "worker.log"
    with start_worker("worker") as worker:
        wait_until(
            "the worker retrying its batch",
            lambda: log.exists() and "transient store error" in log.read_text(),
            90,
            worker,
        )
        row = JobStore(engine).get("persist-1")
        assert row is not None and row["status"] != "failed", row
        wait_until("the retry counted", lambda: worker_retries(worker) > 0, 30, worker)
        redis_client.config_set("stop-writes-on-bgsave-error", "no")  # the disk is back
        view = wait_final(client, "persist-1")
    assert view["status"] == "succeeded", view
    app.extensions["heimdall"].finished.close()  # its Redis goes with the test


def test_a_replica_without_its_primary_is_a_store_unavailable_for_reads_too(
    own_queue_factory, masterless_redis, capture
):
    """Reads of the result cache answered MASTERDOWN (a 500): the shim reads the job's row
    instead, as when Redis is down, and a submission is a 503."""
    local, _, _ = own_queue_factory(redis_url=masterless_redis)
    client = create_app(local).test_client()
    unknown = client.get("/jobs/no-such-job")
    assert unknown.status_code == 404, unknown.get_json()
    refused = submit_npy(client, capture, job_id="masterless-1")
    assert refused.status_code == 503, refused.get_json()


def test_a_read_only_redis_is_a_store_unavailable_not_an_internal_error(
    own_queue_factory, read_only_redis, engine, capture
):
    """A replica refuses writes (READONLY), as during a failover until it is promoted: the shim
    answers 503 and keeps nothing of the submission (it answered 500), and the worker's store
    retries treat it as a Redis that is down rather than failing the batch's jobs."""
    local, _, _ = own_queue_factory(redis_url=read_only_redis)
    client = create_app(local).test_client()
    response = submit_npy(client, capture, job_id="read-only-1")
    assert response.status_code == 503, response.get_json()
    assert response.get_json()["error"]["message"].startswith("Redis is unavailable")
    assert JobStore(engine).get("read-only-1") is None


@pytest.fixture
def read_only_database(settings, engine):
    """A role of this test's own whose transactions are read-only (as on a standby), with the
    rights the service's own role has on the test schema; dropped afterwards."""
    role = f"heimdall_read_only_{uuid.uuid4().hex[:8]}"
    schema = settings.database_schema
    with engine.connect() as connection:
        connection.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))
        connection.execute(sa.text(f'ALTER ROLE "{role}" SET default_transaction_read_only = on'))
        connection.execute(sa.text(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"'))
        rights = "SELECT, INSERT, UPDATE, DELETE ON ALL TABLES"
        connection.execute(sa.text(f'GRANT {rights} IN SCHEMA "{schema}" TO "{role}"'))
    try:
        yield (
            sa.make_url(settings.database_url)
            .set(username=role)
            .render_as_string(hide_password=False)
        )
    finally:
        with engine.connect() as connection:
            connection.execute(sa.text(f'DROP OWNED BY "{role}"'))
            connection.execute(sa.text(f'DROP ROLE "{role}"'))


def test_a_database_that_takes_no_writes_is_a_store_unavailable(
    own_queue_factory, read_only_database, engine, capture
):
    """A read-only transaction (a standby, a database switched read-only) answered 500 at the
    shim, and failed a worker's jobs as an internal error."""
    local, _, _ = own_queue_factory(database_url=read_only_database)
    app = create_app(local)
    try:
        response = submit_npy(app.test_client(), capture, job_id="read-only-db-1")
        assert response.status_code == 503, response.get_json()
        assert "the job database is unavailable" in response.get_json()["error"]["message"]
        assert JobStore(engine).get("read-only-db-1") is None
    finally:
        app.extensions["heimdall"].jobs.engine.dispose()


RUN: dict[str, Any] = {"check": True, "capture_output": True, "text": True, "timeout": 60}


@pytest.fixture
def full_queue_policy(own_queue_factory):
    """Settings with a queue of their own that RabbitMQ holds to one message (a policy, as an
    operator would set ``max-length``; the queue rejects publishes beyond it), and a function
    that lifts the limit. The policy is removed afterwards."""
    local, _, _ = own_queue_factory()
    rabbitmqctl = shutil.which("rabbitmqctl")
    if rabbitmqctl is None:  # a laptop without it skips; CI must have it
        (pytest.fail if os.environ.get("CI") else pytest.skip)("rabbitmqctl is not installed")
    name = f"heimdall-test-{uuid.uuid4().hex[:8]}"

    def policies() -> str:
        listing = subprocess.run([rabbitmqctl, "-q", "list_queues", "name", "policy"], **RUN)
        return listing.stdout

    def lift() -> None:
        subprocess.run([rabbitmqctl, "clear_policy", name], **RUN)

    pattern, limit = f"^{re.escape(local.queue)}$", json.dumps({"max-length": 1})
    subprocess.run([rabbitmqctl, "set_policy", "--apply-to", "queues", name, pattern, limit], **RUN)
    try:
        yield local, lift, lambda: name in policies()
    finally:
        subprocess.run([rabbitmqctl, "clear_policy", name], **{**RUN, "check": False})


def test_a_full_queue_refusing_a_task_is_a_broker_unavailable_and_keeps_nothing(
    full_queue_policy, engine, capture
):
    """RabbitMQ nacks a publish its queue cannot take (reject-publish at max-length): a 503
    that withdraws the row and says so (it said the broker was unavailable), and the same
    submission is accepted once the queue has room."""
    local, lift, limited = full_queue_policy
    app = create_app(local)
    client = app.test_client()
    try:
        first = submit_npy(client, capture, job_id="queue-full-0")
        assert first.status_code == 202, first.get_json()  # the queue declared, the policy on it
        wait_until("the policy applied to the queue", limited, 60)
        refusal = None
        for n in range(1, 6):  # a quorum queue may take one past its limit before it refuses
            variant = replace(capture, iq=capture.iq * np.complex64(1.0 + 1e-4 * n))
            response = submit_npy(client, variant, job_id=f"queue-full-{n}")
            if response.status_code != 202:
                refusal = (f"queue-full-{n}", variant, response)
                break
        assert refusal is not None, "the queue never refused a task"
        refused_id, variant, response = refusal
        assert response.status_code == 503, response.get_json()
        message = response.get_json()["error"]["message"]
        assert message.startswith("the message broker refused the job (its queue may be full)")
        assert JobStore(engine).get(refused_id) is None
        lift()
        accepted = submit_npy(client, variant, job_id=refused_id)
        assert accepted.status_code == 202, accepted.get_json()
    finally:
        app.extensions["heimdall"].jobs.engine.dispose()


def test_a_batch_the_queue_fills_up_keeps_and_lists_what_it_accepted(
    full_queue_policy, engine, capture
):
    """A full queue part way through a batch answered the whole batch 503, though its first
    captures were accepted: their job ids were lost to the client. Now the 202 lists them, the
    capture that met the full queue and every later one (not tried) say so, and just those are
    submitted again; a batch whose first capture meets it is a 503 that keeps nothing."""
    local, lift, limited = full_queue_policy
    app = create_app(local)
    client = app.test_client()
    tag = uuid.uuid4().hex[:8]

    def post_batch(ids: list[str], scales: list[int]):
        stack = np.stack([capture.iq * np.complex64(1.0 + 1e-4 * n) for n in scales])
        query = capture_query(capture, job_ids=",".join(ids))
        return client.post(
            "/predict-batch",
            data=npy_bytes(stack),
            content_type="application/x-npy",
            query_string=query,
        )

    try:
        first = submit_npy(client, capture, job_id=f"batch-full-{tag}")
        assert first.status_code == 202, first.get_json()  # the queue declared, the policy on it
        wait_until("the policy applied to the queue", limited, 60)
        with kombu.Connection(local.broker_url) as connection:  # room for one again
            connection.default_channel.queue_purge(local.queue)

        ids = [f"batch-full-{tag}-{n}" for n in range(6)]
        response = post_batch(ids, list(range(1, 7)))
        assert response.status_code == 202, response.get_json()
        jobs = response.get_json()["jobs"]
        accepted = [job["index"] for job in jobs if "job_id" in job]
        refused = [job for job in jobs if "error" in job]
        cut = refused[0]["index"] if refused else len(jobs)
        assert accepted == list(range(cut)) and 0 < cut < len(jobs), jobs
        assert {job["error"]["code"] for job in refused} == {"service_unavailable"}
        broker = "the message broker refused the job (its queue may be full)"
        assert refused[0]["error"]["message"].startswith(broker), refused
        assert all(
            job["error"]["message"].startswith(f"not tried: {broker}") for job in refused[1:]
        ), refused
        store = JobStore(engine)
        assert all(store.get(job_id) is not None for job_id in ids[:cut])
        assert all(store.get(job_id) is None for job_id in ids[cut:])
        listed = client.get(response.get_json()["status_url"]).get_json()["jobs"]
        assert sorted(job["job_id"] for job in listed) == ids[:cut]

        nothing = post_batch([f"batch-full-{tag}-late-{n}" for n in range(2)], [7, 8])
        assert nothing.status_code == 503, nothing.get_json()
        assert nothing.get_json()["error"]["code"] == "service_unavailable"
        assert store.get(f"batch-full-{tag}-late-0") is None

        lift()
        again = post_batch(ids[cut:], list(range(cut + 1, 7)))
        assert again.status_code == 202, again.get_json()
        assert again.get_json()["accepted"] == len(ids) - cut
        assert all(store.get(job_id) is not None for job_id in ids)
    finally:
        app.extensions["heimdall"].jobs.engine.dispose()


@pytest.fixture
def broker_user_without_configure(settings):
    """A RabbitMQ user of this test's own that may read and write but not declare (configure)
    anything; its broker URL. Deleted afterwards."""
    rabbitmqctl = shutil.which("rabbitmqctl")
    if rabbitmqctl is None:  # a laptop without it skips; CI must have it
        (pytest.fail if os.environ.get("CI") else pytest.skip)("rabbitmqctl is not installed")
    user, password = f"heimdall-test-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    subprocess.run([rabbitmqctl, "add_user", user, password], **RUN)
    try:
        subprocess.run([rabbitmqctl, "set_permissions", "-p", "/", user, "^$", ".*", ".*"], **RUN)
        yield f"amqp://{user}:{password}@127.0.0.1:5672//", user
    finally:
        subprocess.run([rabbitmqctl, "delete_user", user], **{**RUN, "check": False})


def test_a_broker_user_that_may_not_declare_the_queues_is_told_which_permission(
    settings, broker_user_without_configure
):
    """RabbitMQ's ACCESS_REFUSED ended `migrate` (and every start) in a traceback."""
    url, user = broker_user_without_configure
    env = {**worker_env(settings), "HEIMDALL_BROKER_URL": url}
    command = [sys.executable, "-m", "inference_worker.cli", "migrate"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "RabbitMQ refused to declare the queues: ACCESS_REFUSED" in done.stderr
    assert f"rabbitmqctl set_permissions -p / {user} '^" in done.stderr


def test_a_queue_deleted_under_a_running_shim_is_declared_again_and_loses_no_task(
    own_queue_factory, capture
):
    """The shim declares the queue once a connection; deleted since (an operator's
    `rabbitmqctl delete_queue`), a task was routed nowhere and confirmed all the same: a `202`
    for a job no worker would ever see. Now the publish is mandatory, RabbitMQ returns it,
    and the shim declares the queue again and publishes once more."""
    local, _, _ = own_queue_factory()
    app = create_app(local)
    client = app.test_client()
    try:
        first = submit_npy(client, capture, job_id="deleted-queue-1")
        assert first.status_code == 202, first.get_json()
        with kombu.Connection(local.broker_url) as connection:
            connection.default_channel.queue_delete(local.queue)
        second = replace(capture, iq=capture.iq * np.complex64(1.0001))
        accepted = submit_npy(client, second, job_id="deleted-queue-2")
        assert accepted.status_code == 202, accepted.get_json()

        def held() -> int:
            with kombu.Connection(local.broker_url) as connection:
                return int(connection.default_channel.queue_declare(local.queue, passive=True)[1])

        wait_until("the task in the declared queue", lambda: held() == 1, 30)
    finally:
        app.extensions["heimdall"].jobs.engine.dispose()
