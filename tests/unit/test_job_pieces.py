"""Pure pieces of a job: message parsing, blob checks, the cache fingerprint."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import numpy as np
import pytest

from inference_worker.serving.jobs import parse_message
from inference_worker.serving.locating import BadJob, decode_blob, tdoa_fit
from tasks.contract import LocateMessage, capture_fingerprint
from tasks.outbox import asked_otherwise


def message_for(iq: np.ndarray, **changes) -> LocateMessage:
    data = {
        "job_id": "j1",
        "blob_key": "k",
        "n_samples": iq.shape[1],
        "sample_rate_hz": 12_000.0,
        "frequency_mhz": 145.5,
        "receivers": ["a", "b", "c"],
        "capture_time": datetime.now(UTC),
        "iq_sha256": hashlib.sha256(iq.tobytes()).hexdigest(),
    }
    return LocateMessage(**{**data, **changes})


def test_fingerprint_changes_with_sample_rate_and_receiver_order():
    iq = np.ones((3, 10), dtype=np.complex64)
    base = capture_fingerprint(message_for(iq))
    assert base == capture_fingerprint(message_for(iq, job_id="another"))
    assert base != capture_fingerprint(message_for(iq, sample_rate_hz=24_000.0))
    assert base != capture_fingerprint(message_for(iq, receivers=["b", "a", "c"]))


def test_a_resubmission_asking_otherwise_is_named_field_by_field():
    iq = np.ones((3, 10), dtype=np.complex64)
    first = message_for(iq)
    # Another time, submission, batch or id asks the same: a retry may differ in those.
    same = {"job_id": "j2", "capture_time": datetime(2026, 1, 1, tzinfo=UTC), "batch_id": "b"}
    assert asked_otherwise(first, message_for(iq, submitted_at=datetime.now(UTC), **same)) == []
    assert asked_otherwise(first, message_for(iq, model="3", frequency_mhz=145.6)) == [
        "frequency_mhz (first: 145.5, now: 145.6)",
        "model (first: not given, now: '3')",
    ]
    assert asked_otherwise(first, message_for(iq, receivers=["b", "a", "c"])) == ["receivers"]


def test_blob_is_checked_for_presence_size_and_hash():
    iq = np.ones((3, 10), dtype=np.complex64)
    message = message_for(iq)
    np.testing.assert_array_equal(decode_blob(iq.tobytes(), message), iq)
    with pytest.raises(BadJob, match="missing"):
        decode_blob(None, message)
    with pytest.raises(BadJob, match="bytes"):
        decode_blob(iq.tobytes()[:-8], message)
    with pytest.raises(BadJob, match="sha256"):
        decode_blob((iq * 2).tobytes(), message)


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ("text", "JSON object"),
        ({"job_id": "x"}, "blob_key"),
        (
            {
                "job_id": "x",
                "blob_key": "k",
                "n_samples": -1,
                "sample_rate_hz": 1,
                "frequency_mhz": 1,
                "receivers": ["a", "b", "c"],
                "capture_time": "2026-01-01T00:00:00Z",
                "iq_sha256": "0" * 64,
            },
            "n_samples",
        ),
        ({"__reduce__": "os.system"}, "__reduce__"),
    ],
)
def test_malformed_messages_are_named(payload, fragment):
    with pytest.raises(BadJob, match=fragment):
        parse_message(payload)


def test_a_document_with_an_encoded_part_reads_back_as_one_document():
    import json

    from inference_worker.storage.views import with_json

    result = {"lat": 44.5, "ellipses": {"95": [[8.9, 44.4]]}}
    document = {"job_id": "j", "status": "succeeded", "result": None}
    assert json.loads(with_json(document, "result", json.dumps(result))) == {
        **document,
        "result": result,
    }
    assert json.loads(with_json({}, "result", "[1]")) == {"result": [1]}


@pytest.mark.parametrize(
    ("fields", "fit"),
    [
        ({"excluded": [], "sigma_scale": 1.0}, "plausible"),
        ({"excluded": [{"id": "RX2", "reason": "…"}], "sigma_scale": 1.0}, "left_out"),
        ({"excluded": [{"id": "RX2", "cause": "unheard"}], "sigma_scale": 1.0}, "unheard"),
        ({"excluded": [{"id": "RX2", "cause": "unheard"}], "sigma_scale": 2.0}, "widened"),
        (
            {"excluded": [{"id": "RX1", "cause": "unheard"}, {"id": "RX2", "cause": "disagrees"}]},
            "left_out",
        ),
        ({"excluded": [], "sigma_scale": 15.1}, "widened"),
        ({}, "plausible"),  # a result recorded before either field
        # (an exclusion without a cause was recorded before unheard receivers were left out)
    ],
)
def test_a_tdoa_results_fit_is_named_for_the_metrics(fields, fit):
    assert tdoa_fit(fields) == fit
