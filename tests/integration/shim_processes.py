"""Helpers of the integration tests that start a shim process: its environment on a free
port, whether it answers past its start, the command that starts it by socket activation, and
the processes a master started."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

from api_shim.client import starting_answer
from inference_worker.settings import Settings
from tests.integration.helpers import free_port, worker_env


def shim_env(settings: Settings, port: int, runtime_dir: Path) -> dict[str, str]:
    """The environment of a shim on ``port`` with the settings of ``settings``, its control
    socket in ``runtime_dir`` (a test's own, not the host's)."""
    return {
        **worker_env(settings),
        "HEIMDALL_API_PORT": str(port),
        "XDG_RUNTIME_DIR": str(runtime_dir),
    }


def shim_on_free_port(settings: Settings, runtime_dir: Path) -> tuple[int, dict[str, str], str]:
    """A free port, the environment of a shim on it (:func:`shim_env`) and its base URL."""
    port = free_port()
    return port, shim_env(settings, port, runtime_dir), f"http://127.0.0.1:{port}"


def shim_answers(base_url: str) -> bool:
    """Whether a shim process answers ``GET /health`` (with any status) at ``base_url``, past
    its start (while it waits for its stores it answers ``starting``)."""
    try:
        with urllib.request.urlopen(f"{base_url}/health", timeout=5):
            return True
    except urllib.error.HTTPError as answer:
        try:
            body = json.loads(answer.read())
        except ValueError:  # not JSON: not a starting shim's answer
            return True
        return not starting_answer(body)
    except OSError:
        return False


def socket_activated_shim(port: int, env: dict[str, str]) -> list[str]:
    """The command that has systemd's ``systemd-socket-activate`` listen on ``port`` and start
    a one-process shim with ``env`` on the first connection, handing it the socket."""
    return [
        "systemd-socket-activate",
        f"--listen=127.0.0.1:{port}",
        *[f"--setenv={name}" for name in env],  # it hands its children nothing else
        sys.executable,
        "-m",
        "inference_worker.cli",
        "api",
        "--workers",
        "1",
    ]


def child_pids(pid: int) -> list[int]:
    """The processes ``pid`` started (a prefork pool's or gunicorn's workers)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children]
