"""A shim that waits for its stores at start holds its address meanwhile and answers every
request with ``503 starting`` and ``Retry-After``, then serves on the same socket. Its address
was free while it waited: clients and load balancers were refused a connection, as if no shim
were there (214 of the 355 refusals of a chaos soak, `tools/chaos_soak.py --overlap --every 3 8
--seed 14`)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from api_shim.starting import BACKLOG, answering_handed, answering_starting
from inference_worker.cli.processes import cli_process, managed_process, wait_until
from tests.integration.helpers import redis_through
from tests.integration.shim_processes import shim_answers, shim_on_free_port, socket_activated_shim


def answer(
    url: str, method: str = "GET", body: bytes | None = None, timeout_s: float = 10.0
) -> tuple[int, dict, dict]:
    """Status, JSON body and headers of one request; OSError where nothing answers."""
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
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


@pytest.mark.skipif(not shutil.which("systemd-socket-activate"), reason="no systemd")
@pytest.mark.timeout(180, method="thread")
def test_a_socket_systemd_hands_a_starting_shim_is_answered_starting(
    settings, redis_relay, tmp_path
):
    """Under socket activation a shim waiting for its stores left its clients in the socket's
    backlog, unanswered for up to ``HEIMDALL_START_WAIT_S``; it answers them as it answers on
    its own socket. (Sockets a former master hands over on SIGUSR2 are left to it: it serves.)"""
    redis_url = redis_through(settings, redis_relay)
    local = settings.model_copy(update={"redis_url": redis_url, "start_wait_s": 90.0})
    port, env, url = shim_on_free_port(local, tmp_path)
    command = socket_activated_shim(port, env)
    log = tmp_path / "api.log"
    redis_relay.speaking.clear()
    try:
        with managed_process(command, log, {**os.environ, **env}) as shim:
            wait_until("systemd's socket", lambda: "Listening on" in log.read_text(), 30, shim)
            # the first connection starts the shim, and waits for it to import
            status, answered, headers = answer(url + "/health", timeout_s=60)
            assert status == 503 and answered["status"] == "starting", answered
            assert headers["Retry-After"] == "1"
            status, answered, _ = answer(url + "/predict", "POST", b"\0" * 300_000)
            assert status == 503 and answered["status"] == "starting", answered
            wait_until("the shim to say it waits", lambda: "waiting up to" in log.read_text(), 30)
            assert shim.poll() is None
            redis_relay.speaking.set()
            wait_until("the shim to serve", lambda: shim_answers(url), 60, shim)
            status, health, _ = answer(url + "/health")
            assert status == 200, health
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


def test_handed_unix_and_ipv6_sockets_are_answered_and_left_listening(tmp_path) -> None:
    """systemd may hand a Unix socket (``ListenStream=/run/…``) or an IPv6 one: each is
    answered ``starting`` and still listens afterwards, for gunicorn."""

    class OverUnix(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.connect(str(tmp_path / "api.sock"))

    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(tmp_path / "api.sock"))
    unix.listen(BACKLOG)
    try:
        ipv6 = socket.create_server(("::1", 0), family=socket.AF_INET6, backlog=BACKLOG)
    except OSError:  # a host without IPv6
        ipv6 = None
    listeners = [unix] + ([ipv6] if ipv6 else [])
    connections: list[http.client.HTTPConnection] = [OverUnix("localhost", timeout=10)]
    if ipv6:
        connections.append(http.client.HTTPConnection("::1", ipv6.getsockname()[1], timeout=10))
    try:
        with answering_handed([listener.fileno() for listener in listeners]):
            for connection in connections:
                connection.request("GET", "/health")
                response = connection.getresponse()
                assert response.status == 503
                assert json.loads(response.read())["status"] == "starting"
                connection.close()
        for listener in listeners:  # still listening: a connection waits in its backlog
            with socket.socket(listener.family) as waiting:
                waiting.connect(listener.getsockname())
    finally:
        for listener in listeners:
            listener.close()
