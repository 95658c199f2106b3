"""The shim replaced without refusing a connection: SIGUSR2 executes a new master on the same
listening socket (a new release, new settings), SIGTERM then lets the former one go; and started
by systemd's socket activation on the address its settings name; and its processes restarted by
SIGHUP, as often as one likes."""

from __future__ import annotations

import os
import re
import shutil
import signal
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from inference_worker.cli.processes import cli_process, managed_process, wait_until
from tests.helpers import capture_fields
from tests.integration.helpers import job_row
from tests.integration.shim_processes import (
    child_pids,
    shim_answers,
    shim_on_free_port,
    socket_activated_shim,
)


def _running(pid: int) -> bool:
    """Whether ``pid`` runs: not gone, nor a zombie its new parent (once the former master has
    exited, whatever adopts orphans here) has yet to reap."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_sigusr2_then_sigterm_replace_the_shim_with_no_submission_refused(
    own_queue, stores, capture, tmp_path
):
    from api_shim.client import ShimClient

    local, _, _ = own_queue  # no worker consumes: the jobs stay queued
    port, env, url = shim_on_free_port(local, tmp_path)
    fields = capture_fields(capture)
    accepted: list[str] = []
    refused: list[BaseException] = []
    done = threading.Event()

    def submit_until_done() -> None:
        client = ShimClient(url, timeout_s=30)
        while not done.is_set():
            try:
                accepted.append(client.submit_npy(capture.iq, **fields)["job_id"])
            except Exception as exc:  # the assertion below shows it
                refused.append(exc)

    successor = 0
    with cli_process(["api", "--workers", "1"], tmp_path / "api.log", env) as api:
        try:
            wait_until("the shim", lambda: shim_answers(url), 60, api)
            clients = [threading.Thread(target=submit_until_done) for _ in range(3)]
            for client in clients:
                client.start()
            before = set(child_pids(api.pid))

            def new_master() -> int:  # the new master once its own worker runs
                return next((p for p in set(child_pids(api.pid)) - before if child_pids(p)), 0)

            api.send_signal(signal.SIGUSR2)
            wait_until("the new master", lambda: bool(new_master()), 60, api)
            successor = new_master()
            time.sleep(3.0)  # its worker set up: both masters' workers accept
            api.send_signal(signal.SIGTERM)
            api.wait(timeout=35)
            served_before = len(accepted)
            wait_until(
                "submissions to the new master", lambda: len(accepted) > served_before + 20, 60
            )
            done.set()
            for client in clients:
                client.join(timeout=60)
            assert not refused, refused[:3]
            assert _running(successor) and shim_answers(url)
            # its samples survived the former master's exit (their folder was inside its own)
            with urllib.request.urlopen(f"{url}/metrics", timeout=10) as reply:
                metrics = reply.read().decode()
            counted = re.search(
                r'^heimdall_submission_seconds_count\{[^}]*"202"[^}]*\} (\S+)', metrics, re.M
            )
            assert counted and float(counted.group(1)) > 20, metrics[:500]
            # promoted, it listens again on the control socket the former one removed
            control = Path(tmp_path) / f"heimdall-api-{port}.ctl"
            wait_until("the control socket", control.exists, 10)
        finally:
            done.set()
            if successor and _running(successor):
                os.kill(successor, signal.SIGTERM)
                wait_until("the new master to stop", lambda: not _running(successor), 40)
    jobs, _ = stores
    assert len(accepted) > 20
    for job_id in accepted:
        assert job_row(jobs, job_id)["status"] == "queued"


@pytest.mark.skipif(not shutil.which("systemd-socket-activate"), reason="no systemd")
def test_systemd_socket_activation_on_the_settings_address(settings, queue_cleanup, tmp_path):
    """systemd listens on the shim's address and hands the socket over: the shim serves on it
    instead of refusing to start on an address another process holds."""
    port, env, url = shim_on_free_port(settings, tmp_path)
    command = socket_activated_shim(port, env)
    with managed_process(command, tmp_path / "api.log", {**os.environ, **env}) as api:
        # it starts the shim on the first connection and that connection waits for it
        wait_until("the shim", lambda: shim_answers(url), 60, api)
        assert api.poll() is None
    assert "cannot listen" not in (tmp_path / "api.log").read_text()


def _held(pid: int) -> tuple[int, int]:
    """Open descriptors and threads of process ``pid``."""
    return len(os.listdir(f"/proc/{pid}/fd")), len(os.listdir(f"/proc/{pid}/task"))


def _replaced(master: int, former: set[int]) -> bool:
    """Whether ``master``'s eight processes are all new, none of ``former`` left."""
    now = set(child_pids(master))
    return len(now) == 8 and not now & former


def test_sighup_restarts_the_shims_processes_and_the_master_keeps_nothing_of_them(
    settings, queue_cleanup, tmp_path
):
    """SIGHUP forks every shim process afresh, back to back: the master holds the descriptors
    and threads it held before, however often (gunicorn 26.0 left its control socket's thread
    and descriptors behind at each such fork, until the master could open nothing)."""
    _, env, url = shim_on_free_port(settings, tmp_path)
    with cli_process(["api", "--workers", "8"], tmp_path / "api.log", env) as api:
        wait_until("the shim", lambda: shim_answers(url) and len(child_pids(api.pid)) == 8, 60, api)
        time.sleep(2.0)  # every process set up
        before = _held(api.pid)
        for _ in range(5):
            former = set(child_pids(api.pid))
            api.send_signal(signal.SIGHUP)
            wait_until(
                "the shim's processes replaced",
                lambda: _replaced(api.pid, former),  # noqa: B023
                60,
                api,
            )
        time.sleep(2.0)  # the last ones set up
        assert shim_answers(url)
        assert _held(api.pid) == before
