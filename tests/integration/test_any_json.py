"""Any JSON value in any field of a request gets a 4xx that says what is wrong, never a 5xx.

The OpenAPI fuzzing draws values the document allows; these draw what it does not (integers of
hundreds of digits, lists nested in rows of numbers, objects where strings belong, file names
of kiwirecorder's form whose stamp is no time), where ``float()`` overflowing, a 3-D array's
complex view or ``strptime`` had been internal errors.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import hypothesis
from hypothesis import strategies as st
from urllib3 import encode_multipart_formdata

from tests.helpers import capture_query, json_body, npy_bytes

EXAMPLES = 300
EDGE_NUMBERS = [10**309, -(10**309), 10**400, 2**63, 2**64, 1e308, -0.0, 0, 1, 12_000, 145.0]
EDGE_TEXTS = ["", "NaN", "inf", "1e999", "0x10", "1_000", " 12000 ", "a,b,c", ",,", "x,x,x"]
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.sampled_from(EDGE_NUMBERS)
    | st.sampled_from(EDGE_TEXTS)
    | st.text(max_size=12)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
NUMBERS = st.none() | st.integers(-9, 9) | st.floats(allow_nan=False)
IQ_ROWS = st.builds(
    lambda value, n: [[value] * n] * 3,
    NUMBERS | st.lists(NUMBERS, min_size=1, max_size=3) | VALUES,
    st.sampled_from([1, 2, 4]),
)
"""Three rows of one value, whatever it is: what gets past the rows' count and length checks."""
CAPTURE_FIELDS = [
    "iq_data",
    "sample_rate_hz",
    "frequency_mhz",
    "receivers",
    "capture_time",
    "job_id",
    "model",
]
COORDINATE = st.sampled_from(EDGE_NUMBERS) | VALUES
POSITION = st.fixed_dictionaries(
    {"id": st.sampled_from(["a", "b", "c", "d"]), "lat": COORDINATE, "lon": COORDINATE},
    optional={"height_m": VALUES},
)
"""A receiver's position of a good id and any coordinates (other ids: ``VALUES``)."""
DIGITS = "0123456789"
KIWI_NAMES = st.builds(
    "{}T{}Z_{}_iq.wav".format,
    st.text(DIGITS, min_size=8, max_size=8),
    st.text(DIGITS, min_size=6, max_size=6),
    st.text(DIGITS, min_size=1, max_size=14),
)
"""Names of kiwirecorder's form whose stamp need not be a time."""
TDOA_FIELDS = ["frequency_mhz", "expect_emitter", "propagation", "capture_time", "job_id"]
QUERY_FIELDS = [*CAPTURE_FIELDS[1:], "wait", "job_ids"]
FUZZ = hypothesis.settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)


def answered(response, what: object) -> None:
    """A 5xx only as the documented 503 of a service that is down; a 4xx with its reason."""
    status = response.status_code
    assert status < 500 or status == 503, (what, status, response.get_data()[:300])
    if status >= 400:
        assert response.get_json()["error"]["message"], what


def post_json(client, path: str, document: object):
    return client.post(path, data=json.dumps(document), content_type="application/json")


def test_any_json_value_in_a_captures_fields(client, capture):
    base = json_body(capture)

    @FUZZ
    @hypothesis.given(
        st.dictionaries(
            st.sampled_from(CAPTURE_FIELDS), st.sampled_from(EDGE_NUMBERS) | VALUES, min_size=1
        ),
        IQ_ROWS,
    )
    def submit(changes, rows):
        document = {**base, **changes}
        answered(post_json(client, "/predict", {**base, "iq_data": rows}), rows)
        answered(post_json(client, "/predict", document), changes)
        answered(post_json(client, "/predict-batch", {"captures": [document]}), changes)

    submit()


def test_any_json_document_for_a_batch_or_a_reload(client):
    @FUZZ
    @hypothesis.given(VALUES)
    def send(value):
        answered(post_json(client, "/predict-batch", value), value)
        answered(post_json(client, "/predict-batch", {"captures": value}), value)
        answered(post_json(client, "/model/reload", value), value)
        answered(post_json(client, "/model/reload", {"challenger_fraction": value}), value)

    send()


def test_any_text_in_an_npy_submissions_query(client, capture):
    body = npy_bytes(capture.iq)

    @FUZZ
    @hypothesis.given(st.dictionaries(st.sampled_from(QUERY_FIELDS), st.text(max_size=30)))
    def submit(changes):
        query = {**capture_query(capture), **changes}
        for path in ("/predict", "/predict-batch"):
            response = client.post(
                path, data=body, content_type="application/x-npy", query_string=query
            )
            answered(response, (path, changes))

    submit()


def test_any_text_as_a_job_id_or_a_wait(client):
    @FUZZ
    @hypothesis.given(st.text(max_size=40), st.text(max_size=12), st.text(max_size=12))
    def read(job_id, wait, include):
        path = quote(job_id, safe="") or "-"
        answered(client.get(f"/jobs/{path}", query_string={"wait": wait, "include": include}), path)
        answered(client.get(f"/batches/{path}"), path)
        answered(client.get(f"/jobs/{path}/map.png"), path)
        answered(client.get("/uncertainty-ellipse", query_string={"job_id": job_id}), job_id)

    read()


def post_tdoa(client, form: dict[str, str], name: str):
    files = [("capture", (name, b"RIFF", "audio/wav"))] * 3
    body, content_type = encode_multipart_formdata([*form.items(), *files])
    return client.post("/predict", data=body, content_type=content_type)


def test_any_json_in_a_tdoa_sets_positions_and_any_text_in_its_fields(client):
    @FUZZ
    @hypothesis.given(
        st.lists(POSITION, min_size=3, max_size=4) | VALUES,
        st.dictionaries(st.sampled_from(TDOA_FIELDS), st.text(max_size=20)),
    )
    def submit(positions, fields):
        form = {"receivers": json.dumps(positions), "frequency_mhz": "10", **fields}
        answered(post_tdoa(client, form, "a.wav"), form)

    submit()


def test_any_name_for_a_tdoa_sets_files(client):
    places = [("a", 45.0, 7.0), ("b", 45.5, 7.5), ("c", 45.0, 8.0)]
    positions = [{"id": name, "lat": lat, "lon": lon} for name, lat, lon in places]
    form = {"receivers": json.dumps(positions), "frequency_mhz": "0.01"}

    @FUZZ
    @hypothesis.given(KIWI_NAMES | st.text(min_size=1, max_size=30))
    def submit(name):
        answered(post_tdoa(client, form, name), name)

    submit()
