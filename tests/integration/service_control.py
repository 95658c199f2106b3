"""Stopping and starting this machine's RabbitMQ, Redis and PostgreSQL, for the tests that inject
faults. They run only when asked for (``HEIMDALL_FAULT_TESTS=1``; ``.ci/run`` sets it), and
``tools/local_services.sh`` starts again whatever they stopped, also when a test fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import NoReturn

import pytest

from inference_worker.cli.processes import wait_until
from inference_worker.storage.database import JobStore
from tasks.contract import read_message
from tasks.outbox import record_job
from tests.helpers import capture_message
from tests.integration.helpers import blocked_on, hold_row, produce

OPT_IN = "HEIMDALL_FAULT_TESTS"
RESTORE = Path(__file__).resolve().parents[2] / "tools" / "local_services.sh"


def require_opt_in(what: str) -> None:
    """Skip unless the fault tests are asked for; ``what`` says what the test does."""
    if os.environ.get(OPT_IN) != "1":
        pytest.skip(f"{what}: set {OPT_IN}=1")


def cannot_run(suite: str, why: str) -> NoReturn:
    """Asked for but unable to run: a failure in CI, a skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"{suite} cannot run in CI: {why}")
    pytest.skip(why)


def restore_services() -> None:
    subprocess.run([str(RESTORE)], check=True, timeout=180, capture_output=True)


def run(*command: str, check: bool = True) -> None:
    subprocess.run(command, check=check, timeout=120, capture_output=True)


def restart_rabbitmq() -> None:
    try:
        run("rabbitmqctl", "shutdown")
    finally:
        restore_services()  # rabbitmq-server -detached, then waits until it answers
    run("rabbitmqctl", "await_startup")


def restart_redis() -> None:
    """A graceful restart, as an operator does one: Redis saves its data and loads it again.

    The Redis of a development machine runs with persistence off; SHUTDOWN SAVE writes a
    snapshot anyway, which is removed again once loaded so the machine stays as it was.
    """
    dump_dir = subprocess.run(
        ["redis-cli", "config", "get", "dir"], capture_output=True, text=True, check=True
    ).stdout.split()[-1]
    dump = Path(dump_dir) / "dump.rdb"
    existed = dump.exists()
    try:
        run("redis-cli", "shutdown", "save", check=False)
    finally:
        restore_services()
    if not existed:
        dump.unlink(missing_ok=True)


def stop_postgres_for(seconds: float) -> None:
    cluster = sorted(os.listdir("/etc/postgresql"))[-1]
    try:
        run("pg_ctlcluster", "--skip-systemctl-redirect", cluster, "main", "stop", "-m", "fast")
        time.sleep(seconds)
    finally:
        restore_services()


def kill_the_worker_holding_a_job(engine, local, capture, workers: dict[str, subprocess.Popen]):
    """Send a job through the queue, hold its row so the worker that takes it waits there, and
    SIGKILL that worker (its whole process group) with the job in hand. Returns (job id, name).
    """
    job_id = f"fault-{uuid.uuid4()}"
    message = capture_message(capture, job_id, f"{local.redis_prefix}blob:{job_id}")
    record_job(JobStore(engine), read_message(message))
    with engine.connect() as locker:
        holder = hold_row(locker, job_id)
        produce(local, capture, job_id=job_id)
        pids: list[int] = []

        def in_hand() -> bool:
            names = [name for _, name, _ in blocked_on(engine, holder)]
            pids.extend(int(n.rsplit(" ", 1)[1]) for n in names if n.startswith("heimdall-worker"))
            return bool(pids)

        wait_until("a worker taking the held job", in_hand, 30)
        group = os.getpgid(pids[0])
        name = next(n for n, process in workers.items() if process.pid == group)
        os.killpg(group, signal.SIGKILL)
        workers[name].wait(timeout=30)
        locker.rollback()
    return job_id, name
