"""Who may do what: API keys with roles and tenants, rate limits per key, no secret in answers."""

from __future__ import annotations

import hashlib
import logging
import uuid

import pytest
from pydantic import SecretStr

from api_shim import operate
from api_shim.app import create_app
from inference_worker.core.capture import CaptureError
from inference_worker.settings import ApiKey
from inference_worker.storage.database import JobStore
from tests.helpers import npy_bytes
from tests.integration.helpers import produce, submit_npy, wait_final

SITE_A = "key-of-site-a-0123456789"
SITE_B = "key-of-site-b-0123456789"
NO_TENANT = "key-without-tenant-012345"
ADMIN = "key-of-the-operators-0123"
SLOW = "key-with-a-tight-limit-01"
SECRETS = (SITE_A, SITE_B, NO_TENANT, ADMIN, SLOW)


@pytest.fixture(scope="module")
def keyed_settings(settings):
    return settings.model_copy(
        update={
            "redis_prefix": settings.redis_prefix + "keys:",
            "api_keys": [
                ApiKey(name="site-a", key=SecretStr(SITE_A), tenant="site-a"),
                ApiKey(
                    name="site-b",
                    key_sha256=hashlib.sha256(SITE_B.encode()).hexdigest(),
                    tenant="site-b",
                ),
                ApiKey(name="untenanted", key=SecretStr(NO_TENANT)),
                ApiKey(name="ops", key=SecretStr(ADMIN), role="admin"),
                ApiKey(name="slow", key=SecretStr(SLOW), tenant="site-a", rate_limit="3/minute"),
            ],
        }
    )


@pytest.fixture(scope="module")
def keyed(keyed_settings, engine, redis_client, queue_cleanup):
    app = create_app(keyed_settings)
    app.config["TESTING"] = True
    return app.test_client()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def submit_as(client, capture, key: str, *, path: str = "/predict", iq=None, **query):
    return client.post(
        path,
        data=npy_bytes(capture.iq if iq is None else iq),
        content_type="application/x-npy",
        headers=auth(key),
        query_string={
            "sample_rate_hz": capture.sample_rate_hz,
            "frequency_mhz": capture.frequency_mhz,
            "receivers": ",".join(capture.receivers),
            **query,
        },
    )


def test_a_route_added_to_the_operating_blueprint_needs_an_admin_key_without_saying_so(
    keyed_settings, engine, redis_client, queue_cleanup, monkeypatch
):
    # Given a new operating route that declares no access of its own
    original = operate.create_blueprint

    def with_a_new_route():
        blueprint = original()
        blueprint.add_url_rule("/models/compact", "compact", lambda: {"compacted": True})
        return blueprint

    monkeypatch.setattr(operate, "create_blueprint", with_a_new_route)
    app = create_app(keyed_settings)
    # and a route registered outside any audience blueprint
    app.add_url_rule("/outside", "outside", lambda: {"outside": True})
    client = app.test_client()

    for path in ("/models/compact", "/outside"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers=auth(SITE_A)).status_code == 403
        assert client.get(path, headers=auth(ADMIN)).status_code == 200


def assert_no_secret(response) -> None:
    text = response.get_data(as_text=True)
    assert not any(secret in text for secret in SECRETS)


def test_requests_without_a_valid_key_get_401_saying_how_to_authenticate(keyed, capture):
    for headers in ({}, auth("not-a-key-of-ours-at-all"), {"Authorization": "Basic Zm9vOmJhcg=="}):
        response = keyed.get("/jobs/some-job", headers=headers)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.get_json()["error"]["message"]
    refused = submit_npy(keyed, capture)
    assert refused.status_code == 401
    assert submit_as(keyed, capture, SITE_A).status_code == 202
    by_header = keyed.get("/jobs/nothing-here", headers={"X-API-Key": SITE_A})
    assert by_header.status_code == 404


def test_health_metrics_and_the_api_document_need_no_key(keyed):
    for path in ("/health", "/metrics", "/openapi.json"):
        assert keyed.get(path).status_code in (200, 503), path


def test_admin_endpoints_need_an_admin_key(keyed):
    for key, status in ((SITE_A, 403), (NO_TENANT, 403), (ADMIN, 202)):
        response = keyed.post("/model/reload", headers=auth(key))
        assert response.status_code == status, response.get_json()
        assert_no_secret(response)
    assert keyed.post("/model/reload").status_code == 401
    forbidden = keyed.put("/models/aliases/challenger", json={"version": "1"}, headers=auth(SITE_A))
    assert forbidden.status_code == 403 and "admin" in forbidden.get_json()["error"]["message"]
    # This service serves a model folder: the registry cannot be changed, and says so.
    no_registry = keyed.put(
        "/models/aliases/challenger", json={"version": "1"}, headers=auth(ADMIN)
    )
    assert no_registry.status_code == 409
    assert keyed.delete("/models/aliases/challenger", headers=auth(SITE_B)).status_code == 403


def test_a_job_is_readable_only_by_keys_of_its_tenant_and_by_admins(keyed, capture):
    accepted = submit_as(keyed, capture, SITE_A).get_json()
    job_id = accepted["job_id"]
    assert keyed.get(f"/jobs/{job_id}", headers=auth(SITE_A)).get_json()["tenant"] == "site-a"
    assert keyed.get(f"/jobs/{job_id}", headers=auth(ADMIN)).status_code == 200
    for other in (SITE_B, NO_TENANT):
        hidden = keyed.get(f"/jobs/{job_id}", headers=auth(other))
        assert hidden.status_code == 404, "another tenant's job must look like no job"
        ellipse = keyed.get(f"/uncertainty-ellipse?job_id={job_id}", headers=auth(other))
        assert ellipse.status_code == 404
    # A client job id another tenant used is refused without telling whose it is.
    mine = submit_as(keyed, capture, SITE_A, job_id="tenant-job-0001")
    assert mine.status_code == 202
    theirs = submit_as(keyed, capture, SITE_B, job_id="tenant-job-0001")
    assert theirs.status_code == 409 and "site-a" not in theirs.get_data(as_text=True)
    again = submit_as(keyed, capture, SITE_A, job_id="tenant-job-0001")
    assert again.status_code == 202 and again.get_json()["created"] is False


def test_a_batch_is_readable_only_by_its_tenant(keyed, capture):
    import numpy as np

    stack = np.stack([capture.iq, capture.iq])
    response = submit_as(keyed, capture, SITE_B, path="/predict-batch", iq=stack)
    assert response.status_code == 202, response.get_json()
    batch_url = response.get_json()["status_url"]
    assert keyed.get(batch_url, headers=auth(SITE_B)).get_json()["counts"]
    assert keyed.get(batch_url, headers=auth(SITE_A)).status_code == 404


def test_each_key_has_its_own_rate_limit_answered_with_429_and_retry_after(keyed):
    answers = [keyed.get("/jobs/limited-0001", headers=auth(SLOW)) for _ in range(4)]
    assert [a.status_code for a in answers] == [404, 404, 404, 429]
    limited = answers[-1]
    assert int(limited.headers["Retry-After"]) > 0
    error = limited.get_json()["error"]
    assert error["code"] == "too_many_requests" and "Retry-After" in error["message"]
    # Another key (same tenant) is not slowed by it.
    assert keyed.get("/jobs/limited-0001", headers=auth(SITE_A)).status_code == 404


def test_no_secret_in_error_bodies_or_logs(settings, keyed, capture, caplog):
    caplog.set_level(logging.DEBUG)
    for key in SECRETS:
        response = keyed.get("/jobs/x", headers=auth(key + "x"))
        assert_no_secret(response)
    down = settings.model_copy(
        update={
            "broker_url": "amqp://heimdall:broker-password-123@127.0.0.1:1//",
            "redis_url": "redis://:redis-password-123@127.0.0.1:1/0",
            "database_url": "postgresql+psycopg2://heimdall:db-password-123@127.0.0.1:1/x",
        }
    )
    client = create_app(down).test_client()
    answers = [client.get("/health"), submit_npy(client, capture), client.get("/jobs/abc")]
    for response in answers:
        assert response.status_code == 503
        text = response.get_data(as_text=True)
        assert "password-123" not in text, text
    assert "password-123" not in caplog.text
    assert not any(secret in caplog.text for secret in SECRETS)


def test_without_keys_submitting_is_open_and_admin_endpoints_are_off(client):
    response = client.post("/model/reload")
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "admin_disabled"


def test_the_python_client_sends_its_key(keyed, capture, monkeypatch):
    import threading

    from werkzeug.serving import make_server

    from api_shim.client import ShimClient, ShimError

    server = make_server("127.0.0.1", 0, keyed.application, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        fields = {
            "sample_rate_hz": capture.sample_rate_hz,
            "frequency_mhz": capture.frequency_mhz,
            "receivers": list(capture.receivers),
        }
        monkeypatch.delenv("HEIMDALL_API_KEY", raising=False)
        with pytest.raises(ShimError) as refused:
            ShimClient(url).submit_npy(capture.iq, **fields)
        assert refused.value.status == 401
        assert ShimClient(url, api_key=SITE_A).submit_npy(capture.iq, **fields)["job_id"]
        monkeypatch.setenv("HEIMDALL_API_KEY", SITE_B)
        assert ShimClient(url).submit_npy(capture.iq, **fields)["job_id"]
    finally:
        server.shutdown()


def test_a_job_from_the_producer_client_belongs_to_the_tenant_it_names(
    keyed, worker, settings, capture
):
    job_id = produce(settings, capture, tenant="site-b")
    # The worker records the job when it takes it; poll as its tenant until it is final.
    view = wait_final(keyed, job_id, headers=auth(SITE_B))
    assert view["tenant"] == "site-b"
    assert keyed.get(f"/jobs/{job_id}", headers=auth(SITE_A)).status_code == 404


@pytest.mark.parametrize(
    ("extra", "field"), [({"tenant": "site b"}, "tenant"), ({"batch_id": "my batch!"}, "batch_id")]
)
def test_a_producer_naming_a_tenant_or_batch_the_contract_refuses_gets_a_capture_error(
    settings, engine, capture, extra, field
):
    """A tenant the contract refuses raised pydantic's own error out of ``submit``, not the
    ``CaptureError`` it documents; the job row was not written, nothing was sent."""
    job_id = f"refused-{uuid.uuid4().hex[:8]}"
    with pytest.raises(CaptureError, match=field):
        produce(settings, capture, job_id=job_id, **extra)
    assert JobStore(engine).get(job_id) is None


def test_operator_bodies_nested_too_deeply_are_bad_input_not_a_500(keyed):
    deep = b"[" * 50_000 + b"]" * 50_000
    headers = {**auth(ADMIN), "Content-Type": "application/json"}
    reload = keyed.post("/model/reload", data=deep, headers=headers)
    assert reload.status_code == 400, reload.get_json()
    alias = keyed.put("/models/aliases/challenger", data=deep, headers=headers)
    assert alias.status_code == 422, alias.get_json()


def test_an_anonymous_caller_sees_only_the_health_status(keyed):
    anonymous = keyed.get("/health")
    assert set(anonymous.get_json()) == {"status"}
    assert set(keyed.get("/health/model").get_json()) == {"ok"}
    detailed = keyed.get("/health", headers=auth(SITE_A)).get_json()
    assert {"broker", "redis", "database", "model"} <= set(detailed["checks"])
    assert "latency_ms" in detailed["checks"]["database"]
    assert "workers" in keyed.get("/health/model", headers=auth(SITE_A)).get_json()
