"""The shim and the workers while the model registry's database does not answer.

Before: the shim's requests that asked the registry waited for MLflow's retries, then answered
500; a reload that met the outage was refused for good; a worker or a shim process starting in
an outage failed to start, though this host held verified copies of what it served.
"""

from __future__ import annotations

import os
import signal
import uuid
from dataclasses import replace

import pytest
from pydantic import SecretStr

from api_shim.app import create_app
from api_shim.infra import model_check
from inference_worker.cli.processes import wait_until
from inference_worker.core.contract import load_metadata
from inference_worker.serving.models import ServedModels
from inference_worker.serving.registry import (
    CHALLENGER,
    CHAMPION,
    RegistryUnavailable,
    open_registry,
    serving_model_dir,
)
from inference_worker.serving.reload import request_reload
from inference_worker.storage.database import JobStore
from inference_worker.storage.redis_store import RedisStore
from inference_worker.urls import postgresql_url
from tests.helpers import json_body
from tests.integration.helpers import migrated_schema, produce, wait_final_row
from tests.integration.registry_helpers import ADMIN, bootstrapped, in_registry_mode, switch
from tests.integration.shim_processes import child_pids


def test_the_shim_answers_503_while_the_registry_is_down_and_recovers(
    settings, engine, redis_client, queue_cleanup, registry_database, capture, tmp_path
):
    """Every request that asked the registry waited for MLflow's retries, then answered 500
    (or 404 "no version": a failure read as an empty registry)."""
    url, admin = registry_database
    shim_settings = in_registry_mode(
        settings, url, tmp_path, admin_token=SecretStr(ADMIN), redis_prefix="registry:"
    )
    open_registry(shim_settings).bootstrap(shim_settings.model_dir)
    served_sha256 = load_metadata(shim_settings.model_dir).sha256
    client = create_app(shim_settings).test_client()
    admin_headers = {"Authorization": f"Bearer {ADMIN}"}
    assert client.get("/models", headers=admin_headers).status_code == 200
    body = {**json_body(capture), "model": "1"}
    switch(admin, url, on=False)
    try:
        answers = {
            "models": client.get("/models", headers=admin_headers),
            "alias": client.put(
                "/models/aliases/challenger", json={"version": "1"}, headers=admin_headers
            ),
            "reload": client.post("/model/reload", headers=admin_headers),
            # a version with no copy here: whether the registry knows it cannot be told
            "submission": client.post("/predict", json={**json_body(capture), "model": "7"}),
        }
        for name, answer in answers.items():
            assert answer.status_code == 503, (name, answer.get_data(as_text=True))
            error = answer.get_json()["error"]
            assert error["code"] == "registry_unavailable", (name, error)
            assert "does not answer" in error["message"] and "***@" in error["message"]
        # The champion's description is what the workers go on serving through the outage.
        info = client.get("/model/info")
        assert info.status_code == 200 and info.get_json()["sha256"] == served_sha256
        # A version this host holds a verified copy of is accepted, as a worker would serve it.
        named = client.post("/predict", json=body)
        assert named.status_code == 202, named.get_data(as_text=True)
        health = client.get("/health", headers=admin_headers).get_json()
        assert health["status"] == "degraded"  # a 500 before; submissions need no registry
        assert "does not answer" in health["checks"]["model"]["error"]
    finally:
        switch(admin, url, on=True)
    assert (
        client.put(
            "/models/aliases/challenger", json={"version": "1"}, headers=admin_headers
        ).status_code
        == 200
    )
    accepted = client.post("/predict", json=body)
    assert accepted.status_code == 202, accepted.get_data(as_text=True)


def test_a_batch_naming_a_model_in_a_registry_outage_keeps_what_it_accepted(
    settings, engine, queue_cleanup, registry_database, capture, tmp_path
):
    """A batch capture naming a version while the registry did not answer raised out of the
    batch: a 503 for the whole batch, though the captures before it were accepted (their job
    ids lost to the client). A capture after the outage that was itself invalid was told only
    "not tried", and learnt what was wrong when sent again."""
    url, admin = registry_database
    shim_settings = in_registry_mode(settings, url, tmp_path, redis_prefix="registry-batch:")
    open_registry(shim_settings).bootstrap(shim_settings.model_dir)
    app = create_app(shim_settings)
    client = app.test_client()
    tag = uuid.uuid4().hex[:8]
    ids = [f"registry-batch-{tag}-{n}" for n in range(4)]
    captures = [
        json_body(capture, job_id=ids[0]),
        json_body(capture, job_id=ids[1], model="7"),  # no copy here: the registry must answer
        json_body(capture, job_id=ids[2], sample_rate_hz=-1),
        json_body(capture, job_id=ids[3]),
    ]
    before = batch_captures(client)
    switch(admin, url, on=False)
    try:
        response = client.post("/predict-batch", json={"captures": captures})
    finally:
        switch(admin, url, on=True)
        app.extensions["heimdall"].jobs.engine.dispose()
    counted = batch_captures(client)  # what HeimdallSubmissionsRefused reads, beside the 503s
    added = {status: counted[status] - before.get(status, 0) for status in counted}
    assert {status: count for status, count in added.items() if count} == {
        "202": 1,
        "422": 1,
        "503": 2,
    }
    assert response.status_code == 202, response.get_data(as_text=True)
    body = response.get_json()
    assert (body["accepted"], body["rejected"]) == (1, 3)
    jobs = body["jobs"]
    assert jobs[0]["job_id"] == ids[0]
    codes = [job.get("error", {}).get("code") for job in jobs]
    assert codes == [None, "registry_unavailable", "invalid_capture", "registry_unavailable"]
    assert "sample_rate_hz" in jobs[2]["error"]["message"]
    assert jobs[3]["error"]["message"] == f"not tried: {jobs[1]['error']['message']}"
    store = JobStore(engine)
    assert store.get(ids[0]) is not None
    assert all(store.get(job_id) is None for job_id in ids[1:])


def batch_captures(client) -> dict[str, float]:
    """The shim's ``heimdall_batch_captures_total`` by status."""
    prefix = 'heimdall_batch_captures_total{status="'
    counts = {}
    for line in client.get("/metrics").get_data(as_text=True).splitlines():
        if line.startswith(prefix):
            labels, value = line.rsplit(" ", 1)
            counts[labels[len(prefix) : -2]] = float(value)
    return counts


def test_a_worker_process_waits_out_a_registry_outage_during_a_reload(
    settings, redis_client, registry_database, tmp_path, centroid_model_dir
):
    """A reload that met the registry down was marked refused for good: the process served the
    old champion until the next reload an operator asked for."""
    url, admin = registry_database
    process_settings, registry = bootstrapped(settings, url, tmp_path, "reg")
    store = RedisStore(redis_client, process_settings.redis_prefix)
    with migrated_schema(settings.database_url, process_settings.database_schema) as jobs_engine:
        jobs = JobStore(jobs_engine)
        served = ServedModels(process_settings, jobs, store)
        served.refresh()
        reference = served.by_alias[CHAMPION].model.version
        second = registry.register(centroid_model_dir)
        registry.set_alias(CHAMPION, second.version)
        request_reload(process_settings, jobs, store, None)
        switch(admin, url, on=False)
        try:
            served.refresh()
            assert served.by_alias[CHAMPION].model.version == reference
            assert served.last_error and "waits for the registry" in served.last_error
            # A job asking for it is served from the copy verified when the reload was asked.
            assert served.choose("job", second.version).registry_version == second.version
        finally:
            switch(admin, url, on=True)
        served._registry_retry_at = 0.0  # the pause is over
        served.refresh()
        assert served.by_alias[CHAMPION].model.version.startswith("centroid-")
        assert served.last_error is None


def test_a_process_starting_while_the_registry_is_down_serves_what_this_host_last_read(
    settings, redis_client, registry_database, tmp_path, centroid_model_dir
):
    """A pool process that replaced one which died while the registry did not answer had no
    model: its start logged a traceback and its jobs waited for the registry, though the
    champion's verified copy lay on disk."""
    url, admin = registry_database
    process_settings, registry = bootstrapped(settings, url, tmp_path, "last")
    challenger = registry.register(centroid_model_dir)
    registry.set_alias(CHALLENGER, challenger.version)
    unfetched = registry.register(centroid_model_dir)
    store = RedisStore(redis_client, process_settings.redis_prefix)
    with migrated_schema(settings.database_url, process_settings.database_schema) as jobs_engine:
        jobs = JobStore(jobs_engine)
        first = ServedModels(process_settings, jobs, store)
        first.refresh()  # this host reads the aliases and keeps verified copies
        switch(admin, url, on=False)
        try:
            replacement = ServedModels(process_settings, jobs, store)
            replacement.refresh()
            served = {
                alias: loaded.registry_version for alias, loaded in replacement.by_alias.items()
            }
            assert served == {CHAMPION: "1", CHALLENGER: challenger.version}
            assert replacement.last_error and "does not answer" in replacement.last_error
            assert "as this host last read the registry's aliases" in replacement.last_error
            # A job naming a version this host holds is served; one it never fetched waits.
            assert replacement.choose("job", "1").registry_version == "1"
            with pytest.raises(RegistryUnavailable):
                replacement.choose("job", unfetched.version)
            # Before a batch, a registry known to be down is left to the reload thread: one
            # that drops connections held each batch for its 3 s connection timeout.
            replacement._registry_retry_at = 0.0
            replacement.refresh(before_job=True)
            assert replacement._registry_retry_at == 0.0  # not asked
            replacement.refresh()  # the reload thread's call asks, and pauses again
            assert replacement._registry_retry_at > 0.0
        finally:
            switch(admin, url, on=True)
        replacement._registry_retry_at = 0.0  # the pause is over: the registry is read again
        replacement.refresh()
        assert replacement.last_error is None
        assert replacement.generation == first.generation


def test_a_worker_started_while_the_registry_is_down_drains_its_queue(
    own_queue_factory, stores, registry_database, capture, tmp_path
):
    """`heimdall-inference worker` refused to start (exit 2) while the registry did not answer,
    and so did a pool process replacing one that died: jobs waited for the registry."""
    url, admin = registry_database
    local, _, start_worker = own_queue_factory(
        model_source="registry",
        registry_uri=postgresql_url(url, driver_required=False),
        data_dir=tmp_path / "data",
    )
    jobs = stores[0]
    served_before = serving_model_dir(local, bootstrap=True)  # this host read the registry once
    switch(admin, url, on=False)
    try:
        with start_worker("registry-down") as worker:
            row = wait_final_row(jobs, produce(local, capture))
            heartbeats = RedisStore(stores[1].client, local.redis_prefix).workers()
            # The pool process dies; the one replacing it starts in the outage too.
            (first,) = child_pids(worker.pid)
            os.kill(first, signal.SIGKILL)
            wait_until("a new pool process", lambda: child_pids(worker.pid) not in ([], [first]),
                       60, worker)  # fmt: skip
            again = wait_final_row(jobs, produce(local, replace(capture, iq=capture.iq * 1.01)))
            # /health's model check fails naming the registry, yet shows who serves what.
            check = model_check(local, RedisStore(stores[1].client, local.redis_prefix))
    finally:
        switch(admin, url, on=True)
    for finished in (row, again):
        assert finished["status"] == "succeeded", finished
        assert finished["model_version"] == load_metadata(served_before).version
    assert heartbeats and all("does not answer" in (h["last_error"] or "") for h in heartbeats)
    assert not check["ok"] and "does not answer" in check["error"]
    assert check["workers"] and check["configured_version"] == row["model_version"]
    log = (tmp_path / "registry-down.log").read_text()
    assert "named when this host last read the registry" in log  # the main process's check
    assert "Traceback" not in log


def test_a_shim_starting_while_the_registry_is_down_accepts_submissions(
    settings, engine, redis_client, queue_cleanup, registry_database, capture, tmp_path
):
    """A shim process that started while the registry did not answer failed to start."""
    url, admin = registry_database
    shim_settings = in_registry_mode(settings, url, tmp_path, redis_prefix="registry-shim:")
    serving_model_dir(shim_settings, bootstrap=True)  # this host read the registry once
    switch(admin, url, on=False)
    try:
        client = create_app(shim_settings).test_client()
        accepted = client.post("/predict", json=json_body(capture))
        unknown = client.post("/predict", json={**json_body(capture), "model": "7"})
    finally:
        switch(admin, url, on=True)
    assert accepted.status_code == 202, accepted.get_data(as_text=True)
    assert unknown.status_code == 503  # no copy here: checking it needs the registry


def test_model_info_describes_what_the_last_reload_serves(
    settings, redis_client, queue_cleanup, registry_database, centroid_model_dir, tmp_path
):
    """`/model/info` opened the registry on every call (7-10 ms) and described the alias's
    version before any reload had asked the workers to serve it."""
    url, _ = registry_database
    shim_settings, registry = bootstrapped(settings, url, tmp_path, "info")
    client = create_app(shim_settings).test_client()
    reference = client.get("/model/info").get_json()["version"]
    second = registry.register(centroid_model_dir)
    registry.set_alias(CHAMPION, second.version)
    assert client.get("/model/info").get_json()["version"] == reference  # not reloaded yet
    with migrated_schema(settings.database_url, shim_settings.database_schema) as jobs_engine:
        request_reload(shim_settings, JobStore(jobs_engine), RedisStore(redis_client,
                       shim_settings.redis_prefix), None)  # fmt: skip
    assert client.get("/model/info").get_json()["version"] == second.model_version
