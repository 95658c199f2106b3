"""The shim as gunicorn runs it: SIGTERM lets a request in flight finish (its capture is accepted
and answered, then the server exits), and a burst of first requests on every thread is served."""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.parse

from inference_worker.cli.processes import cli_process, wait_until
from tests.helpers import npy_bytes
from tests.integration.helpers import free_port, shim_answers, worker_env


def test_sigterm_lets_the_request_in_flight_finish(
    settings, engine, queue_cleanup, capture, tmp_path
):
    port = free_port()
    env = {**worker_env(settings), "HEIMDALL_API_PORT": str(port)}
    body = npy_bytes(capture.iq)
    query = urllib.parse.urlencode(
        {
            "sample_rate_hz": capture.sample_rate_hz,
            "frequency_mhz": capture.frequency_mhz,
            "receivers": ",".join(capture.receivers),
        }
    )
    head = (
        f"POST /predict?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/x-npy\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()

    def listening() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    with cli_process(["api", "--workers", "1"], tmp_path / "api.log", env) as api:
        # Its worker ready, not only gunicorn's socket: a connection waiting in the listen
        # backlog of a worker still booting is not a request in flight, and the SIGTERM ends it.
        wait_until("the shim", lambda: shim_answers(f"http://127.0.0.1:{port}"), 60, api)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            conn.sendall(head + body[: len(body) // 2])  # the request is in flight
            time.sleep(0.5)
            api.send_signal(signal.SIGTERM)
            time.sleep(1.0)
            assert api.poll() is None, "the shim exited with a request in flight"
            conn.sendall(body[len(body) // 2 :])
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
        status_line, _, rest = answer.partition(b"\r\n")
        assert b" 202 " in status_line, answer[:300]
        job = json.loads(rest.partition(b"\r\n\r\n")[2])
        assert job["status"] == "queued"
        api.wait(timeout=35)  # then it stops (gunicorn's graceful timeout is 30 s)
    assert not listening()


def test_a_burst_of_first_requests_on_every_thread_is_answered(
    settings, engine, queue_cleanup, capture, tmp_path
):
    """The shim's threads all meet their first request at once: each is answered (202), none
    fails while the process sets itself up (its metrics, its connections)."""
    from concurrent.futures import ThreadPoolExecutor

    from api_shim.client import ShimClient

    port = free_port()
    env = {**worker_env(settings), "HEIMDALL_API_PORT": str(port), "HEIMDALL_API_THREADS": "16"}
    with cli_process(["api", "--workers", "1"], tmp_path / "api.log", env) as api:
        client = ShimClient(f"http://127.0.0.1:{port}")
        wait_until("the shim", lambda: shim_answers(client.base_url), 60, api)

        def submit(_: int) -> str:
            return str(
                client.submit_npy(
                    capture.iq,
                    sample_rate_hz=capture.sample_rate_hz,
                    frequency_mhz=capture.frequency_mhz,
                    receivers=list(capture.receivers),
                )["status"]
            )

        with ThreadPoolExecutor(32) as pool:
            statuses = list(pool.map(submit, range(32)))
    assert len(statuses) == 32 and set(statuses) <= {"queued", "succeeded"}, statuses
