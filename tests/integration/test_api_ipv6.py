"""The api on an IPv6 address (``HEIMDALL_API_HOST=::1``): gunicorn was given ``::1:8003`` and
refused it ("'' is not a valid port number"), and the command line's client could not parse
``http://::1:8003``."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from inference_worker.cli.processes import cli_process, wait_until
from tests.integration.helpers import free_port, worker_env
from tests.integration.shim_processes import shim_answers


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="this host has no IPv6 loopback")
def test_the_api_serves_on_an_ipv6_address_and_the_command_line_reaches_it(own_queue, tmp_path):
    local, _, _ = own_queue
    port = free_port()
    env = {**worker_env(local), "HEIMDALL_API_HOST": "::1", "HEIMDALL_API_PORT": str(port)}
    with cli_process(["api", "--workers", "1"], tmp_path / "api.log", env) as api:
        wait_until("the api", lambda: shim_answers(f"http://[::1]:{port}"), 60, api)
        done = subprocess.run(
            [sys.executable, "-m", "inference_worker.cli", "status", "no-such-job"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1, done.stderr
    assert done.stderr == "error: no job with id 'no-such-job' (HTTP 404, job_not_found)\n"
