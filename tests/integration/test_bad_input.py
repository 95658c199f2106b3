"""Client mistakes get a 4xx that says what is wrong, and nothing is accepted."""

from __future__ import annotations

import base64
import gzip
import io
import pickle
import uuid
from dataclasses import replace

import numpy as np
import pytest
import sqlalchemy as sa

from api_shim.app import create_app
from inference_worker.core.contract import ModelSummary, Receiver, load_metadata
from inference_worker.storage.database import JobStore
from inference_worker.storage.schema import jobs
from tests.helpers import capture_query, json_body, npy_bytes, npy_with_header


def post_npy(client, body: bytes, query: dict):
    return client.post("/predict", data=body, content_type="application/x-npy", query_string=query)


def job_count(engine) -> int:
    with engine.connect() as connection:
        return connection.execute(sa.select(sa.func.count()).select_from(jobs)).scalar_one()


@pytest.mark.parametrize(
    ("mangle", "status", "fragment"),
    [
        (lambda iq: iq.astype(np.complex128), 422, "complex64"),
        (lambda iq: iq.real.copy(), 422, "complex64"),
        (lambda iq: iq[:2], 422, "shape"),
        (lambda iq: np.concatenate([iq, iq[:1]]), 422, "shape"),
        (lambda iq: iq[:, :0], 422, "empty"),
        (lambda iq: iq[:, :100], 422, "too short"),
        (
            lambda iq: np.where(np.arange(iq.shape[1]) == 5, np.nan, iq).astype(np.complex64),
            422,
            "NaN",
        ),
        (lambda iq: np.vstack([iq[:2], np.zeros_like(iq[:1])]), 422, "only zeros"),
        (lambda iq: np.tile(iq, (1, 41)), 413, "too long"),
    ],
    ids=[
        "complex128",
        "real",
        "two-receivers",
        "four-receivers",
        "empty",
        "too-short",
        "nan",
        "dead-channel",
        "too-many-samples",
    ],
)
def test_bad_npy_capture_is_rejected_with_reason(client, engine, capture, mangle, status, fragment):
    before = job_count(engine)
    response = post_npy(client, npy_bytes(mangle(capture.iq)), capture_query(capture))
    assert response.status_code == status, response.get_json()
    assert fragment in response.get_json()["error"]["message"]
    assert job_count(engine) == before


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"receivers": "torino,montanaro"}, "3 receivers"),
        ({"receivers": "torino,montanaro,nowhere"}, "unknown receiver"),
        ({"receivers": "torino,torino,giaveno"}, "different"),
        ({"frequency_mhz": None}, "frequency_mhz"),
        ({"frequency_mhz": "abc"}, "frequency_mhz"),
        ({"sample_rate_hz": "nan"}, "sample_rate_hz"),
        ({"sample_rate_hz": 8000}, "sample_rate_hz"),
        ({"capture_time": "yesterday"}, "capture_time"),
        # Accepted before, then unreadable: year 10000 in UTC, as every read of the row met it.
        ({"capture_time": "9999-12-31T23:59:59-05:00"}, "capture_time must lie between"),
        ({"capture_time": "0001-01-01T00:00:00+05:00"}, "capture_time must lie between"),
        ({"job_id": "bad id with spaces"}, "job_id"),
    ],
)
def test_bad_metadata_is_rejected_with_reason(client, capture, change, fragment):
    query = {k: v for k, v in {**capture_query(capture), **change}.items() if v is not None}
    response = post_npy(client, npy_bytes(capture.iq), query)
    assert response.status_code == 422, response.get_json()
    assert fragment in response.get_json()["error"]["message"]


@pytest.mark.parametrize(
    "body",
    [
        b"\x93NUMPY garbage",
        # a header cut before its closing brace: numpy's parser raises tokenize's own error
        npy_with_header(b"{'descr': '<c8', 'fortran_order': False, 'shape': (3, 2), "),
    ],
    ids=["garbage", "unclosed-header"],
)
def test_malformed_npy_is_400(client, capture, body):
    response = post_npy(client, body, capture_query(capture))
    assert response.status_code == 400, response.get_json()
    assert "npy" in response.get_json()["error"]["message"]


def test_pickled_npy_is_refused_and_never_unpickled(client, capture):
    body = npy_bytes(np.array([{"payload": 1}], dtype=object), allow_pickle=True)
    response = post_npy(client, body, capture_query(capture))
    assert response.status_code == 400
    assert "pickle" in response.get_json()["error"]["message"].lower()
    raw_pickle = post_npy(client, pickle.dumps(capture.iq), capture_query(capture))
    assert raw_pickle.status_code == 400


DEEP = b"[" * 50_000 + b"]" * 50_000  # nested past the JSON parser's depth


def test_json_nested_too_deeply_is_refused_as_bad_input_not_a_500(client, capture):
    """The parser's RecursionError was no ValueError: an internal error, logged with a trace."""
    for path in ("/predict", "/predict-batch"):
        response = client.post(path, data=DEEP, content_type="application/json")
        assert response.status_code == 400, (path, response.get_json())
        assert response.get_json()["error"]["message"] == (
            "body is not valid JSON (nested too deeply)"
        )
    form = {
        "receivers": DEEP.decode(),
        "frequency_mhz": "14.1",
        "capture": (io.BytesIO(b"RIFF"), "a"),
    }
    tdoa = client.post("/predict", data=form, content_type="multipart/form-data")
    assert tdoa.status_code == 422, tdoa.get_json()
    assert "receivers must be a JSON list" in tdoa.get_json()["error"]["message"]


def test_malformed_json_is_400_and_says_whether_it_is_json_at_all(client):
    for path in ("/predict", "/predict-batch"):
        response = client.post(path, data=b"{not json", content_type="application/json")
        assert response.status_code == 400
        error = response.get_json()["error"]
        assert error["code"] == "invalid_json"
        assert error["message"].startswith("body is not valid JSON (Expecting property name")
        response = client.post(path, data=b"[1, 2]", content_type="application/json")
        assert response.status_code == 400
        assert response.get_json()["error"]["message"].startswith("body must be a JSON object")
    not_utf8 = client.post("/predict", data=b'{"a": "\xff"}', content_type="application/json")
    assert not_utf8.status_code == 400
    assert "not valid JSON" in not_utf8.get_json()["error"]["message"]


@pytest.mark.parametrize(
    ("iq_data", "fragment"),
    [
        (None, "iq_data"),
        ("not base64!", "base64"),
        (base64.b64encode(b"\0" * 10).decode(), "bytes"),
        ([[0.1, 0.2], [0.1, 0.2]], "one list per receiver"),
        ([[0.1, 0.2], [0.1, 0.2, 0.3, 0.4], [0.1, 0.2]], "different lengths"),
        ([[0.1, 0.2, 0.3], [0.1, 0.2, 0.3], [0.1, 0.2, 0.3]], "even"),
        ([["a", "b"], ["a", "b"], ["a", "b"]], "numbers"),
        (42, "iq_data"),
    ],
)
def test_bad_json_iq_is_rejected_with_reason(client, capture, iq_data, fragment):
    body = {
        "sample_rate_hz": capture.sample_rate_hz,
        "frequency_mhz": capture.frequency_mhz,
        "receivers": list(capture.receivers),
    }
    if iq_data is not None:
        body["iq_data"] = iq_data
    response = client.post("/predict", json=body)
    assert response.status_code == 422, response.get_json()
    assert fragment in response.get_json()["error"]["message"]


def test_body_over_the_limit_is_413(client, settings, capture):
    body = b"\0" * (settings.max_body_bytes + 1)
    response = post_npy(client, body, capture_query(capture))
    assert response.status_code == 413
    message = response.get_json()["error"]["message"]
    assert str(settings.max_body_bytes) in message and "HEIMDALL_MAX_BODY_BYTES" in message


def test_unsupported_media_type_is_415(client):
    response = client.post("/predict", data=b"hello", content_type="text/plain")
    assert response.status_code == 415
    assert "application/json" in response.get_json()["error"]["message"]


@pytest.mark.parametrize("path", ["/predict", "/predict-batch"])
def test_a_compressed_body_is_415_saying_so(client, capture, path):
    """A gzip-ed ``.npy`` was read as it came and refused as "not a valid .npy array"."""
    body = gzip.compress(npy_bytes(capture.iq))
    response = client.post(
        path,
        data=body,
        content_type="application/x-npy",
        query_string=capture_query(capture),
        headers={"Content-Encoding": "gzip"},
    )
    assert response.status_code == 415, response.get_json()
    error = response.get_json()["error"]
    assert (
        error["code"] == "unsupported_encoding" and "send the body uncompressed" in error["message"]
    )
    plain = client.post(
        "/predict",
        data=npy_bytes(capture.iq),
        content_type="application/x-npy",
        query_string=capture_query(capture),
        headers={"Content-Encoding": "identity"},
    )
    assert plain.status_code == 202, plain.get_json()


def test_wrong_method_is_a_json_405(client):
    response = client.get("/predict")
    assert response.status_code == 405
    assert response.get_json()["error"]["code"] == "method_not_allowed"


def test_ids_no_job_can_have_are_404_not_500(client):
    for path in ("/jobs/a%00b", "/batches/a%00b", "/uncertainty-ellipse?job_id=%00"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "no " in response.get_json()["error"]["message"]


def test_after_a_reload_the_shim_checks_receivers_against_the_announced_champion(
    settings, engine, redis_client, queue_cleanup, capture
):
    # Given a shim of its own (own Redis prefix) that started with the reference model
    local = settings.model_copy(update={"redis_prefix": settings.redis_prefix + "announce:"})
    app = create_app(local)
    shim = app.extensions["heimdall"]
    shim.served.max_age_s = 0.0  # look at the serving state on every request
    query = {**capture_query(capture), "receivers": "east,west,north"}
    before = post_npy(app.test_client(), npy_bytes(capture.iq), query)
    assert before.status_code == 422 and "torino" in before.get_json()["error"]["message"]

    # When a reload announces a champion for another network
    other = ModelSummary.of(load_metadata(local.model_dir, verify=False))
    other = replace(
        other,
        receivers=tuple(
            Receiver(r, 45.0, 7.0 + i) for i, r in enumerate(("east", "west", "north"))
        ),
    )
    shim.store.request_reload(champion=other.to_json())

    # Then the shim takes that network's receivers and refuses the old ones
    accepted = post_npy(
        app.test_client(), npy_bytes(capture.iq), {**query, "job_id": "announced-1"}
    )
    assert accepted.status_code == 202, accepted.get_json()
    refused = post_npy(app.test_client(), npy_bytes(capture.iq), capture_query(capture))
    assert refused.status_code == 422 and "east" in refused.get_json()["error"]["message"]


def test_an_unexpected_error_part_way_through_a_batch_keeps_what_it_accepted(
    app, client, engine, capture, monkeypatch
):
    """An error nobody expected (a bug) met by the second capture of a batch answered 500 for
    the whole batch, and the first capture's job id was lost to the client."""
    intake = app.extensions["heimdall"].intake
    accept = intake.accept
    calls: list[str] = []

    def failing_second(capture, **more):
        calls.append(capture.job_id)
        if len(calls) == 2:
            raise RuntimeError("an unexpected error")
        return accept(capture, **more)

    monkeypatch.setattr(intake, "accept", failing_second)
    tag = uuid.uuid4().hex[:8]
    ids = [f"batch-bug-{tag}-{n}" for n in range(3)]
    captures = [json_body(capture, job_id=job_id) for job_id in ids]
    response = client.post("/predict-batch", json={"captures": captures})
    assert response.status_code == 202, response.get_data(as_text=True)
    jobs = response.get_json()["jobs"]
    assert jobs[0]["job_id"] == ids[0]
    assert [job["error"]["code"] for job in jobs[1:]] == ["internal_error", "internal_error"]
    assert jobs[2]["error"]["message"].startswith("not tried: ")
    assert calls == ids[:2]  # the capture after the error was not tried
    rows = JobStore(engine).batch(response.get_json()["batch_id"])
    assert [row["job_id"] for row in rows] == ids[:1]


MULTIPART_PART = b'--b\r\nContent-Disposition: form-data; name="capture"; filename="a.wav"\r\n\r\n'


def test_a_tdoa_body_that_is_no_readable_multipart_is_refused_saying_why(client, engine):
    before = job_count(engine)
    no_boundary = client.post("/predict", data=MULTIPART_PART, content_type="multipart/form-data")
    assert no_boundary.status_code == 422, no_boundary.get_json()
    assert no_boundary.get_json()["error"]["message"] == (
        "the multipart/form-data body cannot be read: no boundary in its Content-Type"
    )
    cut = client.post(
        "/predict", data=MULTIPART_PART + b"RIFF", content_type="multipart/form-data; boundary=b"
    )
    assert cut.status_code == 422, cut.get_json()
    assert cut.get_json()["error"]["message"].startswith(
        "the multipart/form-data body cannot be read: "
    )
    assert job_count(engine) == before


def test_a_form_field_over_the_form_limit_is_413_naming_that_limit(client, app):
    limit = app.config["MAX_FORM_MEMORY_SIZE"]
    form = {"receivers": "x" * (limit + 1), "capture": (io.BytesIO(b"RIFF"), "a.wav")}
    response = client.post("/predict", data=form, content_type="multipart/form-data")
    assert response.status_code == 413, response.get_json()
    assert response.get_json()["error"]["message"] == (
        f"a form field is larger than {limit} bytes, or the form has more than "
        f"{app.config['MAX_FORM_PARTS']} parts"
    )


def test_a_body_cut_short_of_its_length_is_400_and_nothing_is_accepted(client, engine, capture):
    before = job_count(engine)
    body = npy_bytes(capture.iq)
    for content_type in ("application/x-npy", "multipart/form-data; boundary=b"):
        response = client.post(
            "/predict",
            data=body,
            content_type=content_type,
            query_string=capture_query(capture),
            environ_overrides={"CONTENT_LENGTH": str(len(body) + 10)},
        )
        assert response.status_code == 400, (content_type, response.get_json())
    assert job_count(engine) == before
