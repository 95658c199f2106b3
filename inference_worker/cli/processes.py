"""Starting and stopping ``heimdall-inference`` processes (demo, benchmarks, tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from inference_worker.settings import Settings


def settings_env(settings: Settings) -> dict[str, str]:
    """This process's environment with the plain settings of ``settings`` (URLs, names, numbers,
    folders) as ``HEIMDALL_*`` variables, for a child ``heimdall-inference`` process; keys and
    secrets are left out, as are MLflow's waits this process chose for itself."""
    from inference_worker.serving.registry_store import without_applied_defaults

    env = without_applied_defaults(dict(os.environ))
    for name, value in settings.model_dump().items():
        if isinstance(value, str | int | float | Path) and not isinstance(value, bool):
            env[f"HEIMDALL_{name.upper()}"] = str(value)
    return env


class ProcessFailed(RuntimeError):
    """A process started for a command exited, or did not become ready in time."""


def wait_until(
    what: str,
    ready: Callable[[], bool],
    timeout_s: float,
    process: subprocess.Popen | None = None,
    interval_s: float = 0.2,
) -> None:
    """Poll ``ready`` until true; fail early if ``process`` exits, or after ``timeout_s``.

    Raises:
        ProcessFailed: ``process`` exited, or ``ready`` stayed false for ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while not ready():
        if process is not None and process.poll() is not None:
            raise ProcessFailed(f"{what} exited with code {process.returncode}")
        if time.monotonic() > deadline:
            raise ProcessFailed(f"{what} did not become ready within {timeout_s:g} s")
        time.sleep(interval_s)


def stop(process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """SIGTERM the process, as a supervisor stops a service: a worker's warm shutdown (its pool
    finishes the jobs in hand), gunicorn's graceful one. SIGKILL its group if it lingers, and
    whatever of its group outlives it.

    Not SIGTERM to the whole group: a worker's pool processes, told to stop at the same moment
    as their parent, died mid-job ("a batch of 1 jobs was lost", its messages redelivered).
    """
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:  # the group ended with it, as it should
        pass
    process.wait()


def cli_process(
    args: list[str], log_path: Path, env: dict[str, str] | None = None
) -> AbstractContextManager[subprocess.Popen]:
    """Run ``heimdall-inference ARGS`` in its own process group, output to ``log_path``.

    On an error inside the block the log's tail is printed (not on Ctrl-C or an exit that
    says why); the process is always stopped.
    """
    return managed_process([sys.executable, "-m", "inference_worker.cli", *args], log_path, env)


@contextmanager
def managed_process(
    command: list[str], log_path: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen]:
    """Run ``command`` as :func:`cli_process` runs ``heimdall-inference``."""
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            env=env if env is not None else os.environ.copy(),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    except (KeyboardInterrupt, SystemExit):  # asked to stop, or said why: no log to show
        raise
    except BaseException:
        tail = log_path.read_bytes()[-3000:].decode(errors="replace")
        print(f"--- last lines of {log_path} ---\n{tail}", file=sys.stderr, flush=True)
        raise
    finally:
        stop(process)
