"""The shim as gunicorn runs it: SIGTERM lets a request in flight finish (its capture is accepted
and answered, then the server exits) and ends requests waiting for a job with the job as it is;
a burst of first requests on every thread is served."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
import urllib.parse
import urllib.request

from inference_worker.cli.processes import cli_process, wait_until
from tests.helpers import npy_bytes
from tests.integration.helpers import free_port, worker_env
from tests.integration.shim_processes import child_pids, shim_answers


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


def test_sigterm_ends_waits_for_jobs_with_the_job_as_it_is(own_queue, capture, tmp_path):
    """A request waiting for a job (``GET /jobs/<id>?wait=``, ``POST /predict?wait=``) does not
    hold a stopping shim: it answers the job as it is (queued: no worker consumes here) and the
    shim exits; the waits, longer than gunicorn's graceful timeout, would otherwise have been
    cut off with no answer."""
    from api_shim.client import ShimClient

    local, _, _ = own_queue  # a queue no worker consumes: the jobs stay queued
    port = free_port()
    env = {**worker_env(local), "HEIMDALL_API_PORT": str(port), "HEIMDALL_MAX_WAIT_S": "120"}
    url = f"http://127.0.0.1:{port}"
    fields = {
        "sample_rate_hz": capture.sample_rate_hz,
        "frequency_mhz": capture.frequency_mhz,
        "receivers": list(capture.receivers),
    }
    answers: dict[str, object] = {}

    def answer(name: str, call) -> None:
        try:
            answers[name] = call()
        except Exception as exc:  # the assertion below shows it
            answers[name] = exc

    with cli_process(["api", "--workers", "1"], tmp_path / "api.log", env) as api:
        client = ShimClient(url, timeout_s=150)
        wait_until("the shim", lambda: shim_answers(url), 60, api)
        job_id = client.submit_npy(capture.iq, **fields)["job_id"]

        def read() -> tuple[int, str]:
            with urllib.request.urlopen(f"{url}/jobs/{job_id}?wait=100", timeout=150) as reply:
                return reply.status, json.loads(reply.read())["status"]

        def submit() -> tuple[str, str]:
            view = client.submit_npy(capture.iq * 2, **fields, wait_s=100)
            return view["job_id"], view["status"]

        waiters = [
            threading.Thread(target=answer, args=("read", read)),
            threading.Thread(target=answer, args=("submit", submit)),
        ]
        for waiter in waiters:
            waiter.start()
        time.sleep(2.0)  # both requests are waiting
        api.send_signal(signal.SIGTERM)
        for waiter in waiters:
            waiter.join(timeout=150)
        api.wait(timeout=35)
    assert answers["read"] == (200, "queued"), answers
    submitted = answers["submit"]
    assert isinstance(submitted, tuple) and submitted[1] == "queued", answers


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


def test_a_client_waiting_through_a_shim_restart_gets_its_result(own_queue, capture, tmp_path):
    """``ShimClient.wait`` (the command line's) rides a restart: the stopping shim answers its
    wait with the job as it is, the client asks again until a shim listens once more, and gets
    the result once a worker has located the job. It failed with the refused connection."""
    from api_shim.client import ShimClient

    local, _, start_worker = own_queue  # no worker until the shim is back
    port = free_port()
    env = {**worker_env(local), "HEIMDALL_API_PORT": str(port)}
    url = f"http://127.0.0.1:{port}"
    client = ShimClient(url, timeout_s=30)
    outcome: dict[str, object] = {}

    def wait(job_id: str) -> None:
        try:
            outcome["view"] = client.wait(job_id, timeout_s=120)
        except Exception as exc:  # the assertion below shows it
            outcome["error"] = exc

    with cli_process(["api", "--workers", "1"], tmp_path / "first.log", env) as api:
        wait_until("the shim", lambda: shim_answers(url), 60, api)
        job_id = client.submit_npy(
            capture.iq,
            sample_rate_hz=capture.sample_rate_hz,
            frequency_mhz=capture.frequency_mhz,
            receivers=list(capture.receivers),
        )["job_id"]
        waiter = threading.Thread(target=wait, args=(job_id,))
        waiter.start()
        time.sleep(1.5)  # waiting on the shim
        api.send_signal(signal.SIGTERM)
        api.wait(timeout=35)
    time.sleep(2.0)  # no shim listens: the client keeps asking
    assert waiter.is_alive(), outcome
    with (
        cli_process(["api", "--workers", "1"], tmp_path / "second.log", env) as again,
        start_worker("after"),
    ):
        wait_until("the shim again", lambda: shim_answers(url), 60, again)
        waiter.join(timeout=120)
    assert "error" not in outcome, outcome
    view = outcome["view"]
    assert isinstance(view, dict) and view["status"] == "succeeded", view


def test_two_shims_on_a_host_each_keep_a_control_socket_of_their_own(
    settings, engine, queue_cleanup, tmp_path
):
    """gunicorn's control socket (``gunicornc``) is named by the shim's port: with gunicorn's
    one default name a second shim took the first one's socket and removed it when it stopped,
    leaving the first with none (and ``gunicornc`` reaching the wrong one meanwhile)."""
    import subprocess
    import sys
    from pathlib import Path

    runtime = tmp_path / "run"
    runtime.mkdir()
    ports = [free_port(), free_port()]
    envs = [
        {**worker_env(settings), "HEIMDALL_API_PORT": str(p), "XDG_RUNTIME_DIR": str(runtime)}
        for p in ports
    ]

    def workers_of(port: int) -> list[int]:
        gunicornc = Path(sys.executable).with_name("gunicornc")
        shown = subprocess.run(
            [str(gunicornc), "-s", str(runtime / f"heimdall-api-{port}.ctl")]
            + ["-c", "show workers", "-j"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return [worker["pid"] for worker in json.loads(shown.stdout)["workers"]]

    with cli_process(["api", "--workers", "1"], tmp_path / "first.log", envs[0]) as first:
        wait_until("the first shim", lambda: shim_answers(f"http://127.0.0.1:{ports[0]}"), 60)
        with cli_process(["api", "--workers", "1"], tmp_path / "second.log", envs[1]) as second:
            wait_until("the second", lambda: shim_answers(f"http://127.0.0.1:{ports[1]}"), 60)
            assert workers_of(ports[0]) != workers_of(ports[1])
            assert set(workers_of(ports[1])) <= set(child_pids(second.pid))
        assert set(workers_of(ports[0])) <= set(child_pids(first.pid))  # still its own
    assert list(runtime.iterdir()) == []  # each removed its own as it stopped
