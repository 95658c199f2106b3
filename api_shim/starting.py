"""What a shim answers while it starts.

``heimdall-inference api`` waits for its stores (``HEIMDALL_START_WAIT_S``, up to 60 s) and runs
its start-up steps before gunicorn serves. Its address used to be free meanwhile: every client
and load balancer was refused a connection, as if no shim were there (214 of the 355 refusals of
a chaos soak). The shim now takes its address first and answers every request meanwhile with
``503`` (``{"status": "starting", "error": {"code": "starting", ...}}``, ``Retry-After: 1``);
gunicorn then serves on the same socket, so a connection waiting in its backlog as the start
ends is gunicorn's, not refused. Sockets systemd hands a shim are answered the same way
(:func:`answering_handed`); those a former master hands over on ``SIGUSR2`` are not: it serves
on them meanwhile.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from werkzeug.serving import WSGIRequestHandler, make_server

BACKLOG = 2048
"""Connections the listening socket holds until they are accepted (gunicorn's default)."""
RETRY_AFTER_S = 1
BODY_LIMIT = 64 << 20
"""The most of a request's body read (and dropped) before answering: a connection closed on
unread data is reset, and a reset can lose the answer on its way."""
BODY_STALL_S = 10.0
"""A client whose request stops arriving for this long is left (it holds a thread)."""

STARTING = json.dumps(
    {
        "status": "starting",
        "error": {
            "code": "starting",
            "message": "the shim is starting: it waits for its stores and prepares them; "
            "retry shortly",
        },
    }
).encode()


def starting_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Every request's answer while the shim starts, after reading its body (as much of it as
    comes: a length that does not parse, a client that stalls, get the answer all the same).

    A chunked body (werkzeug's server marks its input as ending where the body does) is read
    to its end: werkzeug drains what is left after the answer only while more arrives within
    10 ms, and a client sending its chunks more slowly met a closed connection (a broken pipe)
    instead of the answer."""
    body = environ["wsgi.input"]
    try:
        length = (
            BODY_LIMIT if environ.get("wsgi.input_terminated") else environ.get("CONTENT_LENGTH")
        )
        left = min(int(length or 0), BODY_LIMIT)
        while left > 0 and (chunk := body.read(min(left, 1 << 16))):
            left -= len(chunk)
    except (ValueError, OSError):  # OSError: the handler's timeout, a connection gone
        pass
    start_response(
        "503 SERVICE UNAVAILABLE",
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(STARTING))),
            ("Retry-After", str(RETRY_AFTER_S)),
            ("Connection", "close"),
        ],
    )
    return [STARTING]


class _Quiet(WSGIRequestHandler):
    """Werkzeug's handler without a line for every request, giving up on a stalled one."""

    timeout = BODY_STALL_S

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


def gunicorn_family(host: str) -> int:
    """The address family gunicorn binds ``host`` in: IPv6 for an IPv6 address, else IPv4 (a
    name such as ``localhost`` is bound as IPv4)."""
    return socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET


@contextmanager
def answering_starting(listener: socket.socket) -> Iterator[None]:
    """Answer every request on ``listener`` (bound and listening: TCP or a Unix socket) with
    ``503 starting`` while the block runs; the socket is left listening, with what waits in its
    backlog."""
    name = listener.getsockname()
    host, port = (f"unix://{name}", 0) if listener.family == socket.AF_UNIX else name[:2]
    server = make_server(
        host, port, starting_app, threaded=True, request_handler=_Quiet, fd=listener.fileno()
    )
    thread = threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()  # the accepting loop ends; requests in hand finish on their threads
        thread.join()


@contextmanager
def answering_handed(descriptors: list[int]) -> Iterator[None]:
    """:func:`answering_starting` on listening sockets this process was handed (systemd's socket
    activation), which stay open and listening for gunicorn."""
    with ExitStack() as stack:
        for descriptor in descriptors:
            listener = stack.enter_context(socket.socket(fileno=os.dup(descriptor)))
            stack.enter_context(answering_starting(listener))
        yield
