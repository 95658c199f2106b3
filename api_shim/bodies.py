"""Request bodies read in one step, and a multipart body's fields and files parsed in memory.

Werkzeug reads a body 64 KiB at a time, and under gunicorn every step copies what the server
still holds; its form parser also spools every file part of over 500 kB to a temporary file on
disk and back. A TDoA set's files (about 1.5 MB a receiver for 30 s) went through both: for 12
receivers that was about half of the shim's time for the submission (py-spy). Here the body
is read at once and python-multipart walks it in memory, saying where each part lies in it,
with the limits ``request.files`` has.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

from flask import current_app, g, request
from python_multipart.multipart import MultipartParser
from werkzeug.exceptions import ClientDisconnected
from werkzeug.http import parse_options_header

from api_shim.errors import ApiError

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks


PREFETCHED = "heimdall_body"
"""The request context's copy of a body read before the request took a work slot."""


def request_body() -> bytes:
    """The request's body, read in one step where its length is known (once: a body read
    before the request took its work slot is handed over).

    ``request.get_data`` reads 64 KiB at a time, and under gunicorn every step copies what the
    server still holds: for a 288 kB capture that was about an eighth of the shim's CPU. The
    stream still refuses a body over ``MAX_CONTENT_LENGTH`` (413) or cut short (400), and one
    that stops arriving for ``HEIMDALL_API_BODY_STALL_S`` is refused with 408: a client stalled
    half way (a dead link, a producer stopped mid-upload whose connection stays open) held its
    shim thread for as long as TCP kept the connection, and forty such uploads stalled a
    default shim for good.
    """
    if PREFETCHED in g:
        return g.pop(PREFETCHED)
    length = request.content_length
    if not length:
        return request.get_data(cache=False)
    connection = client_connection()
    if connection is None:  # another server, or a test client: no socket to time
        return _read(request.stream, length)
    stall_s = current_app.extensions["heimdall"].settings.api_body_stall_s
    was = connection.gettimeout()
    connection.settimeout(stall_s)
    try:
        return _read(request.stream, length)
    except ClientDisconnected as exc:  # werkzeug's stream turns the socket's timeout into it
        if not isinstance(exc.__context__, TimeoutError):
            raise
        raise ApiError(
            408,
            "body_timeout",
            f"no part of the request body arrived for {stall_s:g} s; send it again",
        ) from None
    finally:
        connection.settimeout(was)


def client_connection() -> socket.socket | None:
    """The request's connection to its client, where the server hands it over (gunicorn);
    ``None`` under another server or a test client."""
    return request.environ.get("gunicorn.socket")


def client_gone() -> bool:
    """Whether the client of the request in hand closed its connection (nothing more to read,
    and the end of it read): its wait then ends, freeing its place. A server that does not
    hand over its socket (a test client) never says so."""
    connection = client_connection()
    if connection is None:
        return False
    try:
        return connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):  # open, nothing sent: still waiting
        return False
    except OSError:  # reset, or closed under us
        return True


PREFETCH_MAX_BYTES = 8 << 20
"""Largest body read before its request takes a work slot (a `.npy` capture of three receivers
at 192 kHz up to 1.8 s; 12 kHz × 1 s is 0.29 MB): a process's waiting threads
(``HEIMDALL_API_MAX_WAITS``) could otherwise each hold a body of up to
``HEIMDALL_MAX_BODY_BYTES`` at once; a larger one (a TDoA set) is read in its slot, as before."""


def prefetch_body() -> None:
    """Read a submission's body now (before it takes a work slot: a slow upload then holds no
    slot), for :func:`request_body` to hand over (the other endpoints' small JSON bodies are
    read by Flask's ``get_json``)."""
    length = request.content_length
    if request.blueprint == "submit" and length and length <= PREFETCH_MAX_BYTES:
        g.started = time.perf_counter()  # its time counts from here (the upload, a slot's wait)
        setattr(g, PREFETCHED, request_body())


def _read(stream: IO[bytes], length: int) -> bytes:
    parts = []
    while length > 0:
        part = stream.read(length)
        if not part:
            break
        parts.append(part)
        length -= len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


@dataclass(frozen=True)
class Upload:
    """A file part of a multipart body."""

    name: str
    filename: str
    data: bytes


class _FormTooLarge(Exception):
    """A field over the form memory limit, or more parts than the form may have."""


class _Parts:
    """What the multipart parser's callbacks find in one body: each part's name, filename
    (None for a field) and data, as pieces that are views of the body."""

    def __init__(self, body: bytes, max_field_bytes: int | None, max_parts: int | None) -> None:
        self.body, self.view = body, memoryview(body)
        self.max_field_bytes, self.max_parts = max_field_bytes, max_parts
        self.found: list[tuple[str, str | None, list[bytes | memoryview]]] = []
        self.headers: dict[str, str] = {}
        self.field_name, self.field_value = bytearray(), bytearray()
        self.pieces: list[bytes | memoryview] = []
        self.size = 0
        self.ended = False

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self.part_begin,
            "on_header_field": self.header_field,
            "on_header_value": self.header_value,
            "on_header_end": self.header_end,
            "on_headers_finished": self.headers_finished,
            "on_part_data": self.part_data,
            "on_end": self.end,
        }

    def part_begin(self) -> None:
        self.headers, self.pieces, self.size = {}, [], 0

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self.field_name.extend(data[start:end])

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self.field_value.extend(data[start:end])

    def header_end(self) -> None:
        name = self.field_name.decode("latin-1").lower()
        self.headers[name] = self.field_value.decode("utf-8", "replace")
        self.field_name.clear()
        self.field_value.clear()

    def headers_finished(self) -> None:
        if self.max_parts is not None and len(self.found) >= self.max_parts:
            raise _FormTooLarge
        disposition = self.headers.get("content-disposition")
        if disposition is None:
            raise ValueError("a part has no Content-Disposition header")
        _, options = parse_options_header(disposition)  # as werkzeug reads it (filename*=)
        self.found.append((options.get("name", ""), options.get("filename"), self.pieces))

    def part_data(self, data: bytes, start: int, end: int) -> None:
        # Written in one piece, the parser hands out the body itself; a piece of anything else
        # (data it held back between writes, were there several) is copied.
        self.pieces.append(self.view[start:end] if data is self.body else bytes(data[start:end]))
        self.size += end - start
        is_field = self.found[-1][1] is None
        if is_field and self.max_field_bytes is not None and self.size > self.max_field_bytes:
            raise _FormTooLarge

    def end(self) -> None:
        self.ended = True


def _without_preamble(body: bytes, boundary: bytes) -> bytes:
    """The body from its first boundary on: text before it (a preamble, which MIME allows and
    no common client sends) is skipped, as werkzeug skips it."""
    opening = b"--" + boundary
    if body.startswith(opening):
        return body
    at = body.find(b"\r\n" + opening)
    return body[at + 2 :] if at >= 0 else body


def _joined(pieces: list[bytes | memoryview]) -> bytes:
    return bytes(pieces[0]) if len(pieces) == 1 else b"".join(pieces)


def multipart_form() -> tuple[dict[str, str], list[Upload]]:
    """The ``multipart/form-data`` body's fields (the first of each name, as
    ``request.form.to_dict()`` gives them; UTF-8) and its file parts in order, parsed in
    memory with the limits ``request.files`` has (the app's ``MAX_FORM_MEMORY_SIZE`` for each
    field and ``MAX_FORM_PARTS``): the body is bounded by ``MAX_CONTENT_LENGTH``, and once
    parsed only the files' bytes are held.

    python-multipart finds the boundaries with ``bytes.find`` over the whole body and hands
    out where each part's data lies in it; werkzeug's parser took the body 256 kB at a time,
    searching and copying each step three times (16 ms of a 12-receiver set's 17.5 MB against
    2 ms here).

    Raises:
        ApiError: 422 where the body is not multipart that can be read (the reason said),
            413 where a field or the number of parts is over its limit.
    """
    config = current_app.config
    limit, max_parts = config.get("MAX_FORM_MEMORY_SIZE"), config.get("MAX_FORM_PARTS")
    body = request_body()  # over MAX_CONTENT_LENGTH: the app's 413 for the body
    try:
        boundary = request.mimetype_params.get("boundary", "").encode("ascii")
        if not boundary:
            raise ValueError("no boundary in its Content-Type")
        if not body:
            raise ValueError("it is empty")
        body = _without_preamble(body, boundary)
        parts = _Parts(body, limit, max_parts)
        MultipartParser(boundary, parts.callbacks()).write(body)
        if not parts.ended:
            raise ValueError("it ends before its closing boundary")
    except _FormTooLarge:
        raise ApiError(
            413,
            "request_entity_too_large",
            f"a form field is larger than {limit} bytes, or the form has more than "
            f"{max_parts} parts",
        ) from None
    except (ValueError, UnicodeError) as exc:  # MultipartParseError is a ValueError
        raise ApiError(
            422, "invalid_capture", f"the multipart/form-data body cannot be read: {exc}"
        ) from None
    fields: dict[str, str] = {}
    uploads = []
    for name, filename, pieces in parts.found:
        if filename is None:
            fields.setdefault(name, _joined(pieces).decode("utf-8", "replace"))
        else:
            uploads.append(Upload(name, filename, _joined(pieces)))
    return fields, uploads
