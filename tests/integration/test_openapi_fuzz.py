"""The OpenAPI document stays true: generated requests against the live app never get a 5xx,
and every 4xx says what is wrong (schemathesis drives hypothesis from the document)."""

from __future__ import annotations

import hypothesis
import pytest
import schemathesis

from api_shim.app import create_app

EXAMPLES_PER_OPERATION = 30


@pytest.fixture(scope="module")
def live_schema(settings, engine, redis_client, queue_cleanup):
    app = create_app(settings)
    return schemathesis.openapi.from_wsgi("/openapi.json", app)


def test_every_operation_is_documented_and_fuzzed(live_schema):
    operations = [result.ok() for result in live_schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "POST /predict",
        "POST /predict-batch",
        "GET /jobs/{job_id}",
        "GET /batches/{batch_id}",
        "GET /uncertainty-ellipse",
        "GET /health",
        "GET /metrics",
    }
    for operation in operations:
        failures: list[str] = []

        @hypothesis.given(case=operation.as_strategy())
        @hypothesis.settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        def call(case) -> None:
            response = case.call()
            where = f"{case.method} {case.formatted_path}"
            status = response.status_code
            if status == 503:  # a service (or a worker) is not there: documented, never a crash
                body = response.json()
                assert body.get("error") or body.get("status") == "unavailable" or "ok" in body, (
                    where
                )
                return
            assert status < 500, f"{where}: {status} {response.text[:300]}"
            if status >= 400:
                assert response.json()["error"]["message"], f"{where}: 4xx without a reason"

        try:
            call()
        except AssertionError as exc:  # name the operation, then fail
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
        assert not failures, failures


def test_service_is_healthy_after_the_fuzzing(live_schema, worker):
    app = live_schema.app
    response = app.test_client().get("/health")
    assert response.status_code == 200 and response.get_json()["status"] == "ok"
