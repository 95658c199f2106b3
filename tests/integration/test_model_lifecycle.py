"""Model lifecycle under load: a challenger takes its share, a promotion moves all traffic,
a corrupted version is refused, and no job fails or is lost on the way.

A real worker (prefork, 2 processes) serves the registry's aliases from an embedded MLflow
store; a thread submits captures through the real Flask app the whole time.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from api_shim.app import create_app
from api_shim.services import ALIAS_RECHECK_S, model_resolver
from inference_worker.cli.processes import cli_process, wait_until
from inference_worker.core.contract import load_metadata
from inference_worker.serving.models import choose_alias
from inference_worker.serving.registry import CHALLENGER, CHAMPION, open_registry
from inference_worker.storage.redis_store import RedisStore
from inference_worker.storage.schema import jobs
from inference_worker.storage.statuses import FINAL_STATUSES
from tasks.intake import ModelRequestError
from tests.helpers import json_body
from tests.integration.helpers import delete_queues, free_port, worker_env

ADMIN = "lifecycle-admin-token"
SUBMIT_INTERVAL_S = 0.03


@dataclass
class Load:
    """Submissions made by a background thread: (job id, monotonic time accepted)."""

    accepted: list[tuple[str, float]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)


@pytest.fixture(scope="module")
def lifecycle(settings, engine, redis_client, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("registry")
    lc = settings.model_copy(
        update={
            "queue": settings.queue + ".lifecycle",
            "redis_prefix": settings.redis_prefix + "lc:",
            "model_source": "registry",
            "data_dir": data_dir,
            "admin_token": SecretStr(ADMIN),
            "worker_concurrency": 2,
        }
    )
    env = worker_env(lc)
    env.update(
        {
            "HEIMDALL_MODEL_SOURCE": "registry",
            "HEIMDALL_DATA_DIR": str(data_dir),
            "HEIMDALL_WORKER_METRICS_PORT": str(free_port()),
        }
    )
    log_path = data_dir / "worker.log"
    store = RedisStore(redis_client, lc.redis_prefix)
    with cli_process(["worker", "--concurrency", "2"], log_path, env) as process:
        # The worker registers the reference model as champion in the empty registry.
        wait_until("the registry worker", lambda: bool(store.workers()), 60, process)
        app = create_app(lc)
        client = app.test_client()

        def all_workers_current() -> bool:
            return client.get("/health/model").status_code == 200

        wait_until("the registry worker", all_workers_current, 60, process)
        yield lc, app, all_workers_current
    delete_queues(lc.broker_url, lc.queue)


def start_load(app, capture) -> tuple[Load, threading.Thread]:
    load = Load()

    def run() -> None:
        client = app.test_client()
        number = 0
        while not load.stop.is_set():
            number += 1
            iq = capture.iq * np.complex64(1.0 + 1e-6 * number)  # a new capture each time
            body = {**json_body(capture), "iq_data": base64.b64encode(iq.tobytes()).decode()}
            response = client.post("/predict", json=body)
            if response.status_code == 202:
                load.accepted.append((response.get_json()["job_id"], time.monotonic()))
            else:
                load.refused.append(
                    f"{response.status_code} {response.get_data(as_text=True)[:200]}"
                )
            time.sleep(SUBMIT_INTERVAL_S)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return load, thread


def reload(client, **body) -> dict:
    response = client.post("/model/reload", json=body, headers={"Authorization": f"Bearer {ADMIN}"})
    assert response.status_code in (202, 409), response.get_json()
    return {"status": response.status_code, **response.get_json()}


def final_rows(engine, job_ids: list[str], timeout_s: float = 60.0) -> dict[str, dict]:
    """The rows of ``job_ids`` once all are final (or as they are after ``timeout_s``)."""

    def rows() -> dict[str, dict]:
        with engine.connect() as connection:
            return {
                r["job_id"]: dict(r)
                for r in connection.execute(
                    sa.select(
                        jobs.c.job_id, jobs.c.status, jobs.c.model_version, jobs.c.error
                    ).where(jobs.c.job_id.in_(job_ids))
                ).mappings()
            }

    def all_final() -> bool:
        found = rows()
        return all(found.get(j, {}).get("status") in FINAL_STATUSES for j in job_ids)

    try:
        wait_until("every job final", all_final, timeout_s)
    except RuntimeError:
        pass  # the caller asserts on what is there
    return rows()


def submit_numbered(client, capture, prefix: str, count: int) -> list[str]:
    """Submit ``count`` distinct captures with the fixed job ids ``<prefix>-000`` and on (the
    A/B side of a job depends on its id only, so the counts below are the same every run)."""
    job_ids = [f"{prefix}-{n:03d}" for n in range(count)]
    for n, job_id in enumerate(job_ids):
        iq = capture.iq * np.complex64(1.0 - 1e-6 * (n + 1))
        body = {**json_body(capture), "iq_data": base64.b64encode(iq.tobytes()).decode()}
        response = client.post("/predict", json={**body, "job_id": job_id})
        assert response.status_code == 202, response.get_json()
    return job_ids


def served_versions(engine, job_ids: list[str]) -> dict[str, str]:
    rows = final_rows(engine, job_ids)
    assert all(rows[j]["status"] == "succeeded" for j in job_ids), list(rows.values())[:3]
    return {j: rows[j]["model_version"] for j in job_ids}


def test_challenger_share_promotion_and_refused_model_under_load(
    lifecycle, engine, simulator, model_dir, centroid_model_dir
):
    settings, app, all_workers_current = lifecycle
    client = app.test_client()
    registry = open_registry(settings)
    reference_version = load_metadata(model_dir, verify=False).version
    centroid_version = load_metadata(centroid_model_dir, verify=False).version
    capture = simulator.simulate(np.random.default_rng(5), sample_rate_hz=12_000.0, duration_s=0.25)
    load, thread = start_load(app, capture)
    try:
        wait_until("steady submissions", lambda: len(load.accepted) >= 20, 60)

        # Given a challenger with 20 % of the traffic
        challenger = registry.register(centroid_model_dir)
        registry.set_alias(CHALLENGER, challenger.version)
        answer = reload(client, challenger_fraction=0.2)
        assert answer["status"] == 202 and answer["challenger"] == challenger.version
        wait_until("workers on the challenger split", all_workers_current, 30)
        split = served_versions(engine, submit_numbered(client, capture, "split", 150))

        # When it is promoted to champion and the challenger alias removed
        registry.set_alias(CHAMPION, challenger.version)
        registry.remove_alias(CHALLENGER)
        assert reload(client, challenger_fraction=0.0)["status"] == 202
        wait_until("workers on the new champion", all_workers_current, 30)
        # The shim learns of a reload within a second (it answers captures already located from
        # the result cache of the model it believes serves): these captures repeat the split's.
        shim = app.extensions["heimdall"]
        wait_until("the shim on the champion", lambda: shim.model.version == centroid_version, 30)
        promoted = served_versions(engine, submit_numbered(client, capture, "promoted", 20))

        # And a corrupted version is offered as challenger
        corrupted = registry.register(model_dir)
        stored = Path(urllib.parse.urlparse(corrupted.source).path) / "model.onnx"
        data = bytearray(stored.read_bytes())
        data[200] ^= 0xFF
        stored.write_bytes(bytes(data))
        registry.set_alias(CHALLENGER, corrupted.version)
        refused = reload(client, challenger_fraction=0.5)
        assert refused["status"] == 409 and "sha256" in refused["error"]["message"]
        # ... and even if a reload reaches the workers behind the shim's back
        app.extensions["heimdall"].store.request_reload(0.5)

        def refusal_reported() -> bool:
            health = client.get("/health/model")
            problems = " ".join(health.get_json()["problems"])
            return health.status_code == 503 and "refused" in problems

        wait_until("the workers reporting the refused model", refusal_reported, 30)
        after = served_versions(engine, submit_numbered(client, capture, "after-refusal", 20))
    finally:
        load.stop.set()
        thread.join(timeout=10)

    accepted = load.accepted
    rows = final_rows(engine, [job_id for job_id, _ in accepted])
    statuses = Counter(rows.get(job_id, {}).get("status", "lost") for job_id, _ in accepted)
    print(f"\nlifecycle: {len(accepted)} accepted, {dict(statuses)}, refused: {len(load.refused)}")
    assert not load.refused
    assert statuses == Counter({"succeeded": len(accepted)}), [
        r for r in rows.values() if r["status"] != "succeeded"
    ][:3]

    share = sum(v == centroid_version for v in split.values()) / len(split)
    print(f"challenger share over {len(split)} jobs: {share:.1%}")
    assert 0.1 <= share <= 0.3
    for job_id, version in split.items():  # sticky: the job id alone decides the side
        expected = choose_alias(job_id, 0.2, True)
        assert version == (centroid_version if expected == CHALLENGER else reference_version)
    assert all(v == centroid_version for v in promoted.values())
    assert all(v == centroid_version for v in after.values())  # the refused model never served


def test_a_job_may_ask_for_a_registry_version_and_the_registry_is_mirrored(
    lifecycle, engine, capture
):
    settings, app, all_workers_current = lifecycle
    client = app.test_client()
    versions = open_registry(settings).versions()
    first = versions[0]
    body = json_body(capture, model=first.version)
    response = client.post("/predict", json=body)
    assert response.status_code == 202, response.get_json()
    rows = final_rows(engine, [response.get_json()["job_id"]])
    (row,) = rows.values()
    assert row["status"] == "succeeded" and row["model_version"] == first.model_version
    unknown = client.post("/predict", json={**body, "model": "999"})
    assert unknown.status_code == 422 and "999" in unknown.get_json()["error"]["message"]
    with engine.connect() as connection:
        mirrored = {
            r["version"]: r["is_active"]
            for r in connection.execute(
                sa.text("SELECT version, is_active FROM model_versions")
            ).mappings()
        }
    assert {v.model_version for v in versions} <= set(mirrored)


def test_an_admin_moves_and_removes_registry_aliases_over_http(lifecycle):
    settings, app, _ = lifecycle
    client = app.test_client()
    admin = {"Authorization": f"Bearer {ADMIN}"}
    registry = open_registry(settings)
    version = registry.versions()[0].version
    assert client.put("/models/aliases/shadow", json={"version": version}).status_code == 401
    moved = client.put("/models/aliases/shadow", json={"version": version}, headers=admin)
    assert moved.status_code == 200, moved.get_json()
    assert registry.aliases()["shadow"] == version
    for bad in ("a.b", "v2", "latest"):  # MLflow refuses them: the shim answered 500
        refused = client.put(f"/models/aliases/{bad}", json={"version": version}, headers=admin)
        assert refused.get_json()["error"]["code"] == "invalid_alias", bad
    unknown = client.put("/models/aliases/shadow", json={"version": "999"}, headers=admin)
    assert unknown.status_code == 404 and "999" in unknown.get_json()["error"]["message"]
    serving = client.delete(f"/models/aliases/{settings.model_alias}", headers=admin)
    assert serving.status_code == 409
    removed = client.delete("/models/aliases/shadow", headers=admin)
    assert removed.status_code == 200 and "shadow" not in registry.aliases()
    assert client.delete("/models/aliases/shadow", headers=admin).status_code == 404


def test_a_challenger_for_another_network_is_refused(lifecycle, centroid_model_dir, tmp_path):
    """Its share of the jobs could not be served: the reload is refused and nothing changes."""
    settings, app, _ = lifecycle
    client = app.test_client()
    other = tmp_path / "other-network"
    shutil.copytree(centroid_model_dir, other)
    metadata = json.loads((other / "model.json").read_text())
    metadata["receivers"][0]["id"] = "elsewhere"
    (other / "model.json").write_text(json.dumps(metadata))
    registry = open_registry(settings)
    registry.set_alias(CHALLENGER, registry.register(other).version)
    try:
        refused = reload(client, challenger_fraction=0.1)
        assert refused["status"] == 409
        assert "same network" in refused["error"]["message"]
    finally:
        registry.remove_alias(CHALLENGER)


def test_a_version_registered_from_the_command_line_is_mirrored_with_its_alias(
    lifecycle, engine, centroid_model_dir, tmp_path
):
    """`models register DIR --alias A` changes the registry as `promote` does: the new version
    and its alias reach ``model_versions`` at once, not at the next reload."""
    settings, _, _ = lifecycle
    folder = tmp_path / "cli-registered"
    shutil.copytree(centroid_model_dir, folder)
    metadata = json.loads((folder / "model.json").read_text())
    metadata["version"] = f"cli-{uuid.uuid4().hex[:8]}"
    (folder / "model.json").write_text(json.dumps(metadata))
    env = {
        **worker_env(settings),
        "HEIMDALL_MODEL_SOURCE": "registry",
        "HEIMDALL_DATA_DIR": str(settings.data_dir),
    }
    done = subprocess.run(
        [sys.executable, "-m", "inference_worker.cli", "models", "register", str(folder)]
        + ["--alias", "cli-registered"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    try:
        assert done.returncode == 0, done.stderr
        assert "cli-registered -> version" in done.stdout
        with engine.connect() as connection:
            active = connection.execute(
                sa.text("SELECT is_active FROM model_versions WHERE version = :v"),
                {"v": metadata["version"]},
            ).scalar_one_or_none()
        assert active is True
    finally:
        registry = open_registry(settings)
        if "cli-registered" in registry.aliases():
            registry.remove_alias("cli-registered")


def test_an_alias_a_submission_names_is_asked_of_the_registry_once_a_while(lifecycle):
    """Two registry reads a submission while a client names an alias: an alias found is taken
    as there for ``ALIAS_RECHECK_S``, and asked again after it."""
    settings, app, _ = lifecycle
    now = [1000.0]
    resolve = model_resolver(settings, app.extensions["heimdall"].served, clock=lambda: now[0])
    registry = open_registry(settings)
    registry.set_alias("passing", registry.versions()[0].version)
    resolve("passing")
    registry.remove_alias("passing")
    now[0] += ALIAS_RECHECK_S - 0.5
    resolve("passing")  # not asked again: still taken as there
    now[0] += 1.0
    with pytest.raises(ModelRequestError, match="passing"):
        resolve("passing")
