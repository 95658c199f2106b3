"""What the command line says when something other than the shim answers at its address (a
wrong port, a proxy's error page), and when the reader of its output goes away (``| head``)."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from api_shim.client import ShimError
from inference_worker.cli.main import main

ANSWERS = {
    "/404-page": (404, b"<html><body>Not Found</body></html>", "text/html"),
    "/404-empty": (404, b"", None),
    "/200-page": (200, b"<html>hello</html>", "text/html"),
    "/200-list": (200, b"[1, 2]", "application/json"),
    "/202-no-status": (202, b'{"job_id": 5}', "application/json"),
}


@pytest.fixture
def other_server(monkeypatch) -> Iterator[tuple[list[str], str]]:
    """An HTTP server that is not the shim, at the address the command line calls, and that
    address: each test appends the answer it wants (a key of ``ANSWERS``) before calling."""
    wanted: list[str] = []

    class Answer(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, body, content_type = ANSWERS[wanted[-1]]
            self.send_response(status)
            if content_type:
                self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HEIMDALL_API_HOST", "127.0.0.1")
    monkeypatch.setenv("HEIMDALL_API_PORT", str(server.server_address[1]))
    try:
        yield wanted, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _refusal(capsys, argv: list[str], code: int) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == code
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        ("/404-page", "HTTP 404 with '<html><body>Not Found</body></html>', not an error in"),
        ("/404-empty", "HTTP 404 with an empty body, not an error in the shim's form"),
        ("/200-page", "HTTP 200 with '<html>hello</html>', not a job as the shim shows one"),
        ("/200-list", "HTTP 200 with '[1, 2]', not a job as the shim shows one"),
        ("/202-no-status", "HTTP 202 with '{\"job_id\": 5}', not a job as the shim shows one"),
    ],
)
def test_an_answer_not_in_the_shims_form_says_where_it_came_from_and_what_it_was(
    other_server, capsys, tmp_path, answer, said
):
    """Each was a traceback (``dict()`` of a page, ``KeyError: 'job_id'``) or "HTTP 404: None"."""
    wanted, base = other_server
    wanted.append(answer)
    err = _refusal(capsys, ["status", "x"], 1)
    assert err.startswith(f"error: {base} (GET /jobs/x) answered {said}")
    assert err.endswith(": is `heimdall-inference api` serving there?\n")

    capture = tmp_path / "capture.npy"
    np.save(capture, np.ones((3, 1200), np.complex64))
    submit = ["submit", str(capture), "--sample-rate", "12000", "--frequency-mhz", "145"]
    err = _refusal(capsys, [*submit, "--receivers", "a,b,c"], 2)
    assert err.startswith(f"error: {base} (POST /predict) answered {said}")


def test_the_shims_own_errors_read_as_their_message_code_and_status():
    body = {"error": {"code": "job_not_found", "message": "no job with id 'x'"}}
    assert str(ShimError(404, body)) == "no job with id 'x' (HTTP 404, job_not_found)"
    assert ShimError(404, body).body == body
    long_page = "<html>" + "x" * 500
    assert str(ShimError(502, long_page, "http://h:1 (GET /jobs/x)")) == (
        f"http://h:1 (GET /jobs/x) answered HTTP 502 with {long_page[:117] + '...'!r}, not an "
        "error in the shim's form: is `heimdall-inference api` serving there?"
    )


def test_a_reader_that_goes_away_ends_the_command_quietly():
    """``heimdall-inference check | head -1`` printed "error: [Errno 32] Broken pipe"."""
    only_the_host = [
        arg
        for area in ("rabbitmq", "redis", "postgresql", "model", "workers", "api")
        for arg in ("--skip", area)
    ]
    command = [sys.executable, "-m", "inference_worker.cli", "check", *only_the_host]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # before it has printed anything (it starts in about a second)
    with process.stderr:
        err = process.stderr.read()
    assert process.wait(timeout=60) == 1
    assert err == b""
