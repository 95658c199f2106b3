"""A broker that refuses work — a queue at its length limit, a user that may not declare the
queues, a queue deleted under a running shim — is a service unavailable with its reason, as one
that is down: a 503 and nothing kept at the shim (a batch keeps what it accepted before), never
a 500 or a task routed nowhere."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from dataclasses import replace
from typing import Any

import kombu
import numpy as np
import pytest

from api_shim.app import create_app
from inference_worker.cli.processes import wait_until
from inference_worker.core.capture import iq_digest
from inference_worker.storage.database import JobStore
from tests.helpers import capture_query, npy_bytes
from tests.integration.helpers import submit_npy, worker_env

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
        store = app.extensions["heimdall"].store  # nor its capture, nor the note it waited with
        assert not store.has_blob(store.blob_key(refused_id, iq_digest(variant.iq)))
        assert store.get_result_json(refused_id) is None
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
