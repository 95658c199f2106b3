"""Request bodies read in one step, and a multipart body's fields and files parsed in memory.

Werkzeug reads a body 64 KiB at a time, and under gunicorn every step copies what the server
still holds; its form parser also spools every file part of over 500 kB to a temporary file on
disk and back. A TDoA set's files (about 1.5 MB a receiver for 30 s) went through both: for 12
receivers that was about half of the shim's time for the submission (py-spy). Here the body
is read at once and werkzeug's own multipart parser walks it in memory, with the same limits
as ``request.files``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import IO, cast

from flask import current_app, request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import MultiPartParser

from api_shim.errors import ApiError

_STEP = 256 * 1024
"""Bytes the multipart parser takes at a time (it refuses more than the form memory limit at
once, 500 kB by default, whatever the part)."""


def request_body() -> bytes:
    """The request's body, read in one step where its length is known.

    ``request.get_data`` reads 64 KiB at a time, and under gunicorn every step copies what the
    server still holds: for a 288 kB capture that was about an eighth of the shim's CPU. The
    stream still refuses a body over ``MAX_CONTENT_LENGTH`` (413) or cut short (400).
    """
    length = request.content_length
    if not length:
        return request.get_data(cache=False)
    stream = request.stream
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


def _in_memory(*_args: object, **_kwargs: object) -> IO[bytes]:
    return io.BytesIO()


def multipart_form() -> tuple[dict[str, str], list[Upload]]:
    """The ``multipart/form-data`` body's fields (the first of each name, as
    ``request.form.to_dict()`` gives them) and its file parts in order, parsed as
    ``request.files`` would be (the app's ``MAX_FORM_MEMORY_SIZE`` for each field and
    ``MAX_FORM_PARTS``) but each file kept in memory: the body is bounded by
    ``MAX_CONTENT_LENGTH``, and once parsed only the files' bytes are held.

    Raises:
        ApiError: 422 where the body is not multipart that can be read (the reason said),
            413 where a field or the number of parts is over its limit.
    """
    config = current_app.config
    limit = config.get("MAX_FORM_MEMORY_SIZE")
    parser = MultiPartParser(
        stream_factory=_in_memory,
        max_form_memory_size=limit,
        max_form_parts=config.get("MAX_FORM_PARTS"),
        buffer_size=min(_STEP, limit // 2) if limit else _STEP,
    )
    body = request_body()  # over MAX_CONTENT_LENGTH: the app's 413 for the body
    try:
        boundary = request.mimetype_params.get("boundary", "").encode("ascii")
        if not boundary:
            raise ValueError("no boundary in its Content-Type")
        fields, files = parser.parse(io.BytesIO(body), boundary, len(body))
    except RequestEntityTooLarge:
        raise ApiError(
            413,
            "request_entity_too_large",
            f"a form field is larger than {limit} bytes, or the form has more than "
            f"{config.get('MAX_FORM_PARTS')} parts",
        ) from None
    except ValueError as exc:
        raise ApiError(
            422, "invalid_capture", f"the multipart/form-data body cannot be read: {exc}"
        ) from None
    uploads = [  # a BytesIO's value is its own buffer, not a copy
        Upload(name, part.filename or "", cast(io.BytesIO, part.stream).getvalue())
        for name, part in files.items(multi=True)
    ]
    return fields.to_dict(), uploads
