"""What a shim answers while it waits for its stores at start: ``503 starting`` with
``Retry-After``, after reading the request's body, whatever the request holds."""

from __future__ import annotations

import io
import json

from api_shim.starting import starting_app


class Stalled(io.BytesIO):
    def read(self, size: int | None = -1) -> bytes:
        raise TimeoutError("timed out")  # the handler's timeout, a client stopped half way


def answer(environ: dict) -> tuple[str, dict[str, str], dict]:
    said: dict = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        said.update(status=status, headers=dict(headers))

    body = b"".join(starting_app(environ, start_response))
    return said["status"], said["headers"], json.loads(body)


def test_every_request_is_answered_starting_after_its_body_is_read():
    upload = io.BytesIO(b"x" * 200_000)
    status, headers, body = answer({"wsgi.input": upload, "CONTENT_LENGTH": "200000"})
    assert status.startswith("503")
    assert headers["Retry-After"] == "1" and headers["Connection"] == "close"
    assert body["status"] == "starting" and body["error"]["code"] == "starting"
    assert upload.tell() == 200_000  # read whole: a connection closed on unread data is reset


def test_a_chunked_body_is_read_to_its_end():
    """werkzeug's server gives a chunked body as an input that ends where the body does, with
    no length: it is read whole as well."""
    upload = io.BytesIO(b"x" * 300_000)
    status, _, body = answer({"wsgi.input": upload, "wsgi.input_terminated": True})
    assert status.startswith("503") and body["status"] == "starting"
    assert upload.tell() == 300_000


def test_a_length_that_does_not_parse_or_a_stalled_body_still_gets_the_answer():
    for environ in (
        {"wsgi.input": io.BytesIO(b"abc"), "CONTENT_LENGTH": "three"},
        {"wsgi.input": Stalled(), "CONTENT_LENGTH": "10"},
        {"wsgi.input": io.BytesIO(b"")},
    ):
        status, _, body = answer(environ)
        assert status.startswith("503") and body["status"] == "starting"
