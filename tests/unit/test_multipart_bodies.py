"""A TDoA submission's multipart body, parsed in place: the same fields and files, in the same
order, as werkzeug's own parser (``request.form`` and ``request.files``) finds in it, and the
same limits."""

from __future__ import annotations

import io

import pytest
from flask import Flask, request
from hypothesis import given, settings
from hypothesis import strategies as st
from urllib3 import encode_multipart_formdata

from api_shim.bodies import multipart_form
from api_shim.errors import ApiError

app = Flask(__name__)
app.config["MAX_FORM_MEMORY_SIZE"] = 4_000
app.config["MAX_FORM_PARTS"] = 40

BOUNDARY_LIKE = st.sampled_from([b"\r\n--", b"--", b"\r\n", b"\r", b"-", b"x", b"<B>"])
"""Pieces of boundaries (``<B>``: the boundary's own start, all but its last character)."""
DATA = st.lists(st.one_of(st.binary(max_size=300), BOUNDARY_LIKE), max_size=12).map(b"".join)
NAME = st.text("abcdefgh_-", min_size=1, max_size=8)


def parsed(body: bytes, content_type: str) -> tuple[dict[str, str], list[tuple[str, str, bytes]]]:
    stream = io.BytesIO(body)
    with app.test_request_context(
        method="POST", input_stream=stream, content_length=len(body), content_type=content_type
    ):
        fields, uploads = multipart_form()
    return fields, [(u.name, u.filename, u.data) for u in uploads]


def werkzeug_parsed(body: bytes, content_type: str):
    stream = io.BytesIO(body)
    with app.test_request_context(
        method="POST", input_stream=stream, content_length=len(body), content_type=content_type
    ):
        files = [(n, f.filename or "", f.read()) for n, f in request.files.items(multi=True)]
        return request.form.to_dict(), files


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(NAME, st.text(max_size=60)), max_size=5),
    st.lists(st.tuples(NAME, NAME, DATA), max_size=5),
    st.text("0123456789abcdefABCDEF'+_-.", min_size=1, max_size=40),
)
def test_fields_and_files_read_as_werkzeug_reads_them(fields, files, boundary):
    """Files holding pieces of boundaries and line breaks at any place among them included."""
    files = [
        (name, filename, data.replace(b"<B>", boundary[:-1].encode()))
        for name, filename, data in files
    ]
    parts = [*fields, *[(name, (filename, data)) for name, filename, data in files]]
    body, content_type = encode_multipart_formdata(parts, boundary=boundary)
    if (f"--{boundary}").encode() in b"".join(data for _, _, data in files):
        return  # such a file cannot be sent with this boundary
    fields_found, files_found = parsed(body, content_type)
    names = list(dict.fromkeys(name for name, _, _ in files_found))
    by_name = sorted(files_found, key=lambda file: names.index(file[0]))  # as MultiDict has them
    assert (fields_found, by_name) == werkzeug_parsed(body, content_type)


def test_file_names_in_utf_8_or_as_rfc_2231_parameters_read_as_werkzeug_reads_them():
    body, content_type = encode_multipart_formdata([("capture", ("a.wav", b"RIFF"))])
    for disposition in (
        'name="capture"; filename="Ørsted_iq.wav"',
        "name=\"capture\"; filename*=UTF-8''%C3%98rsted_iq.wav",
    ):
        changed = body.replace(b'name="capture"; filename="a.wav"', disposition.encode("utf-8"))
        found = parsed(changed, content_type)
        assert found == werkzeug_parsed(changed, content_type)
        assert found[1][0][1] == "Ørsted_iq.wav"


def test_a_body_that_is_not_whole_multipart_says_why():
    body, content_type = encode_multipart_formdata([("capture", ("a.wav", b"RIFF"))])
    for cut, reason in [
        (body[:-10], "it ends before its closing boundary"),
        (b"", "it is empty"),
        (b"no boundary here", "Expected boundary character"),
    ]:
        with pytest.raises(ApiError) as refused:
            parsed(cut, content_type)
        assert refused.value.status == 422
        assert "the multipart/form-data body cannot be read: " in refused.value.message
        assert reason in refused.value.message
    with pytest.raises(ApiError, match="no boundary in its Content-Type"):
        parsed(body, "multipart/form-data")
    preamble = b"a preamble, which MIME allows\r\n" + body
    assert parsed(preamble, content_type) == werkzeug_parsed(preamble, content_type)
    padded = body.replace(
        b"Content-Disposition:", b"X-Padding: " + b"x" * 10_000 + b"\r\n" + b"Content-Disposition:"
    )
    with pytest.raises(ApiError, match="cannot be read: .*header"):
        parsed(padded, content_type)  # a part's header line is bounded
    nameless = body.replace(b"Content-Disposition", b"Content-Description")
    with pytest.raises(ApiError, match="a part has no Content-Disposition header"):
        parsed(nameless, content_type)


def test_a_field_over_the_form_memory_limit_or_too_many_parts_is_413():
    for parts in (
        [("receivers", "x" * 4_001)],
        [("capture", (f"{k}.wav", b"RIFF")) for k in range(41)],
    ):
        body, content_type = encode_multipart_formdata(parts)
        with pytest.raises(ApiError) as refused:
            parsed(body, content_type)
        assert refused.value.status == 413
    files_over_the_field_limit = [("capture", ("a.wav", b"R" * 10_000))] * 3
    body, content_type = encode_multipart_formdata(files_over_the_field_limit)
    assert [len(data) for _, _, data in parsed(body, content_type)[1]] == [10_000] * 3
