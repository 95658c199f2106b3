"""Clients waiting for jobs (``?wait=``), and uploads that stall, leave a shim process the threads
its other requests need: the waits have threads of their own, at most ``HEIMDALL_API_MAX_WAITS``
of them held at once; the next wait is answered at once with the job as it stands and
``Retry-After``, which the Python client honours. Each wait used to hold one of
``HEIMDALL_API_THREADS``: as many waiting clients as threads stalled every submission and health
check until their waits ran out (a backlog or a stopped worker keeps every wait to its end). An
upload that stops arriving holds a thread but no work slot, and is answered 408 after
``HEIMDALL_API_BODY_STALL_S``; it held its thread for as long as TCP kept the connection."""

from __future__ import annotations

import json
import select
import socket
import threading
import time
import urllib.request

from inference_worker.cli.processes import cli_process, wait_until
from tests.helpers import npy_bytes
from tests.integration.helpers import free_port, worker_env
from tests.integration.shim_processes import shim_answers


def test_waits_beyond_the_bound_are_answered_at_once_and_leave_submissions_their_threads(
    own_queue, capture, tmp_path
):
    from api_shim.client import ShimClient

    local, _, start_worker = own_queue  # no worker until the end: the jobs stay queued
    port = free_port()
    env = {
        **worker_env(local),
        "HEIMDALL_API_PORT": str(port),
        "HEIMDALL_API_THREADS": "2",
        "HEIMDALL_API_MAX_WAITS": "2",
    }
    url = f"http://127.0.0.1:{port}"
    fields = {
        "sample_rate_hz": capture.sample_rate_hz,
        "frequency_mhz": capture.frequency_mhz,
        "receivers": list(capture.receivers),
    }
    client = ShimClient(url, timeout_s=60)
    with cli_process(["api", "--workers", "1"], tmp_path / "api.log", env) as api:
        wait_until("the shim", lambda: shim_answers(url), 60, api)
        job_id = client.submit_npy(capture.iq, **fields)["job_id"]
        held: list[str] = []

        def hold() -> None:
            with urllib.request.urlopen(f"{url}/jobs/{job_id}?wait=25", timeout=60) as reply:
                held.append(json.loads(reply.read())["status"])

        holders = [threading.Thread(target=hold) for _ in range(2)]
        for holder in holders:
            holder.start()
        time.sleep(2.0)  # both are waiting

        with urllib.request.urlopen(f"{url}/jobs/{job_id}?wait=25", timeout=60) as reply:
            third = (reply.status, reply.headers.get("Retry-After"), json.loads(reply.read()))
        # the other requests meet free threads while both waits are held
        resubmitted = client.submit_npy(capture.iq * 2, **fields)
        health_status, _ = client.health()
        assert all(holder.is_alive() for holder in holders), "answered only once a wait ended"
        assert third[:2] == (200, "1") and third[2]["status"] == "queued", third
        assert resubmitted["status"] == "queued" and health_status in (200, 503)
        assert declined(url) >= 1

        with start_worker("worker"):
            view = client.wait(job_id, timeout_s=60)  # asked again after each Retry-After
            for holder in holders:
                holder.join(timeout=60)
    assert view["status"] == "succeeded", view
    assert held == ["succeeded", "succeeded"], held  # woken when the worker finished the job


def declined(url: str) -> float:
    return metric(url, "heimdall_api_waits_declined_total")


def metric(url: str, sample: str) -> float:
    """The value of one of the shim's samples (``name{labels}`` as the shim writes it)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(sample + " "):
                return float(line.split()[1])
    return 0.0


def test_stalled_uploads_hold_no_work_slot_and_are_answered_408(own_queue, capture, tmp_path):
    from api_shim.client import ShimClient

    local, _, _ = own_queue
    port = free_port()
    env = {
        **worker_env(local),
        "HEIMDALL_API_PORT": str(port),
        "HEIMDALL_API_THREADS": "2",
        "HEIMDALL_API_MAX_WAITS": "2",
        "HEIMDALL_API_BODY_STALL_S": "8",
    }
    url = f"http://127.0.0.1:{port}"
    body = npy_bytes(capture.iq)
    head = (
        "POST /predict?sample_rate_hz=12000&frequency_mhz=145.5&receivers="
        f"{','.join(capture.receivers)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/x-npy\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with cli_process(["api", "--workers", "1"], tmp_path / "api.log", env) as api:
        wait_until("the shim", lambda: shim_answers(url), 60, api)
        stalled = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(3)]
        try:
            for connection in stalled:
                connection.sendall(head + body[:1000])  # then nothing more
            time.sleep(1.0)
            status, _ = ShimClient(url, timeout_s=6).health()  # a thread and a slot are free
            waiting, _, _ = select.select(stalled, [], [], 0)
            assert not waiting, "a stalled upload was answered before the health check"
            assert status in (200, 503)
            answers = [read_answer(connection) for connection in stalled]
            timed_out = metric(
                url, 'heimdall_submission_seconds_count{endpoint="predict",status="408"}'
            )
        finally:
            for connection in stalled:
                connection.close()
    assert timed_out == 3  # counted among the submissions, as refused
    for answer in answers:
        status_line, _, rest = answer.partition(b"\r\n")
        assert b" 408 " in status_line, answer[:300]
        error = json.loads(rest.partition(b"\r\n\r\n")[2])["error"]
        assert error["code"] == "body_timeout" and "for 8 s" in error["message"], error


def read_answer(connection: socket.socket) -> bytes:
    """Everything the shim sends until it closes the connection."""
    answer = b""
    while chunk := connection.recv(65536):
        answer += chunk
    return answer


def test_a_wait_whose_client_went_away_frees_its_place(own_queue, capture, tmp_path):
    """A client that gives up before its wait ends (an HTTP timeout shorter than the wait) no
    longer holds its place among the process's waits to the end: the next client's wait is held,
    not answered at once."""
    from api_shim.client import ShimClient

    local, _, _ = own_queue
    port = free_port()
    env = {**worker_env(local), "HEIMDALL_API_PORT": str(port), "HEIMDALL_API_MAX_WAITS": "1"}
    url = f"http://127.0.0.1:{port}"
    with cli_process(["api", "--workers", "1"], tmp_path / "api.log", env) as api:
        wait_until("the shim", lambda: shim_answers(url), 60, api)
        job_id = ShimClient(url).submit_npy(
            capture.iq,
            sample_rate_hz=capture.sample_rate_hz,
            frequency_mhz=capture.frequency_mhz,
            receivers=list(capture.receivers),
        )["job_id"]
        with socket.create_connection(("127.0.0.1", port), timeout=30) as impatient:
            impatient.sendall(f"GET /jobs/{job_id}?wait=25 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            time.sleep(1.0)  # its wait is held
        time.sleep(2.5)  # gone: its wait ends at the next check
        with urllib.request.urlopen(f"{url}/jobs/{job_id}?wait=1", timeout=30) as reply:
            retry_after, status = (
                reply.headers.get("Retry-After"),
                json.loads(reply.read())["status"],
            )
        assert retry_after is None and status == "queued", (retry_after, status)
        assert declined(url) == 0
