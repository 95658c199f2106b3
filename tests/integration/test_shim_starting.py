"""A shim that waits for its stores at start holds its address meanwhile and answers every
request with ``503 starting`` and ``Retry-After``, then serves on the same socket. Its address
was free while it waited: clients and load balancers were refused a connection, as if no shim
were there (214 of the 355 refusals of a chaos soak, `tools/chaos_soak.py --overlap --every 3 8
--seed 14`)."""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from api_shim.starting import BACKLOG, answering_starting
from inference_worker.cli.processes import cli_process, wait_until
from tests.integration.helpers import redis_through, shim_answers, shim_on_free_port


def answer(url: str, method: str = "GET", body: bytes | None = None) -> tuple[int, dict, dict]:
    """Status, JSON body and headers of one request; OSError where nothing answers."""
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), dict(error.headers)


@pytest.mark.timeout(180, method="thread")
def test_a_shim_waiting_for_redis_answers_starting_then_serves_on_the_same_address(
    settings, redis_relay, tmp_path
):
    redis_url = redis_through(settings, redis_relay)
    local = settings.model_copy(update={"redis_url": redis_url, "start_wait_s": 90.0})
    _, env, url = shim_on_free_port(local, tmp_path)
    log = tmp_path / "api.log"
    redis_relay.speaking.clear()
    try:
        with cli_process(["api", "--workers", "1"], log, env) as shim:
            wait_until("the shim to say it waits", lambda: "waiting up to" in log.read_text(), 60)
            for method, path, body in [
                ("GET", "/health", None),
                ("POST", "/predict", b"\0" * 300_000),  # read whole before the answer
                ("GET", "/jobs/some-job", None),
            ]:
                status, answered, headers = answer(url + path, method, body)
                assert status == 503, (path, answered)
                assert answered["status"] == "starting", answered
                assert answered["error"]["code"] == "starting", answered
                assert headers["Retry-After"] == "1"
            assert not shim_answers(url)  # the tests' own probe waits on past "starting"
            assert shim.poll() is None
            redis_relay.speaking.set()
            wait_until("the shim to serve", lambda: shim_answers(url), 60)
            status, health, _ = answer(url + "/health")
            assert status == 200, health
            assert health["status"] in ("ok", "degraded") and "checks" in health
            assert "Listening at: http://127.0.0.1:" in log.read_text()
    finally:
        redis_relay.speaking.set()


def test_slow_uploads_are_read_before_the_starting_answer() -> None:
    """An upload arriving in pieces, chunked or of a given length, gets ``503 starting``: a
    chunked one sent more slowly than werkzeug's 10 ms drain met a broken pipe instead."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=BACKLOG)
    port = listener.getsockname()[1]

    def pieces() -> Iterator[bytes]:
        for _ in range(64):  # 4 MiB: more than the connection's buffers hold unread
            time.sleep(0.02)
            yield b"x" * 65_536

    try:
        with answering_starting(listener):
            for chunked in (True, False):
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                headers = {} if chunked else {"Content-Length": str(64 * 65_536)}
                try:
                    connection.request(
                        "POST", "/predict", body=pieces(), headers=headers, encode_chunked=chunked
                    )
                    response = connection.getresponse()
                    said = json.loads(response.read())
                finally:
                    connection.close()
                assert response.status == 503 and said["status"] == "starting", chunked
    finally:
        listener.close()
