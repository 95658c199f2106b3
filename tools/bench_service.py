"""Stages 3-5 of ``tools/bench_throughput.py``: the shim alone and its yardstick (a minimal
handler doing the same work), the whole service driven by closed-loop clients, and one client
against an idle service (stages 1-2 are in ``tools/bench_pipeline.py``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from inference_worker.cli import bootstrap
from inference_worker.cli.processes import (
    cli_process,
    managed_process,
    settings_env,
    wait_until,
)
from inference_worker.settings import Settings
from tools.bench_clients import Load, answers_health, npy
from tools.bench_stages import JobCounts, drop, own_settings, prepare
from tools.process_meter import CpuMeter, service_roots

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def running_service(
    settings: Settings, api_workers: int, processes: int, log_dir: Path, with_worker: bool
) -> Iterator[tuple[int, dict[str, list[int]]]]:
    """A shim (and a worker) on the stage's own queue, prefix and schema, ready; yields the
    shim's port and the process groups to meter."""
    port = int(settings.api_port) + 100 + (1 if with_worker else 0)
    env = {**settings_env(settings), "HEIMDALL_API_PORT": str(port)}
    probe = Load(port, [], "", False, 0)
    with ExitStack() as stack:
        api = stack.enter_context(
            cli_process(
                ["api", "--workers", str(api_workers), "--port", str(port)],
                log_dir / "api.log",
                env,
            )
        )
        groups = {"shim": [api.pid]}
        if with_worker:
            worker = stack.enter_context(
                cli_process(
                    ["worker", "--concurrency", str(processes)], log_dir / "worker2.log", env
                )
            )
            groups["workers"] = [worker.pid]

        wait_until("the service", lambda: answers_health(probe, with_worker), 120, api, 0.5)
        yield port, groups


def capture_query(capture: Any) -> str:
    return (
        f"sample_rate_hz={capture.sample_rate_hz}&frequency_mhz={capture.frequency_mhz}"
        f"&receivers={','.join(capture.receivers)}"
    )


def shim_and_service(
    base: Settings,
    captures: list,
    jobs: int,
    clients: int,
    api_workers: int,
    processes: int,
    log_dir: Path,
    with_worker: bool,
    submit_waits: bool = False,
) -> dict:
    settings = own_settings(base, "s" if with_worker else "a")
    prepare(settings)
    query = capture_query(captures[0])
    bodies = [npy(x.iq) for x in captures]
    try:
        with running_service(settings, api_workers, processes, log_dir, with_worker) as (
            port,
            groups,
        ):
            # warm-up submissions (job ids of their own), not counted
            warm = Load(port, bodies, query, with_worker, min(50, jobs), "warm", submit_waits)
            warm.run(min(clients, 4))
            load = Load(port, bodies, query, with_worker, jobs, submit_waits=submit_waits)
            meter = CpuMeter({**groups, **service_roots()})
            meter.start()
            elapsed = load.run(clients)
            meter.stop()
        if with_worker:
            with JobCounts(settings) as counts:
                batch = counts.summary()[2]
        else:
            batch = 0.0
        finished = len(load.end_to_end_ms) if with_worker else len(load.submit_ms)
        return {
            "jobs": finished,
            "per_s": finished / elapsed,
            "load": load,
            "cpu": meter,
            "batch": batch,
        }
    finally:
        drop(settings)


MINIMAL_SERVERS = ("gunicorn", "granian")
"""WSGI servers the minimal handler can run under: the shim's own (gunicorn's threaded
workers), and granian (HTTP in Rust, the app on threads of its own; the ``dev`` extra) to weigh
what the server costs."""


def minimal_handler(
    base: Settings,
    captures: list,
    jobs: int,
    clients: int,
    api_workers: int,
    log_dir: Path,
    server: str = "gunicorn",
) -> dict:
    """The shim's yardstick (``tools/minimal_shim.py``: the same work and round trips as a
    submission, nothing else) under ``server`` with the shim's processes and threads, driven and
    metered as the shim alone is."""
    from tools.minimal_shim import create_table, libpq_form

    settings = own_settings(base, "m")
    bootstrap.declare_queues(settings)
    libpq_url = libpq_form(settings.database_url)
    create_table(libpq_url, settings.database_schema)
    port = int(settings.api_port) + 102
    env = {
        **os.environ,
        "MINIMAL_DATABASE_URL": libpq_url,
        "MINIMAL_SCHEMA": settings.database_schema,
        "MINIMAL_REDIS_URL": settings.redis_url,
        "MINIMAL_REDIS_PREFIX": settings.redis_prefix,
        "MINIMAL_BROKER_URL": settings.broker_url,
        "MINIMAL_QUEUE": settings.queue,
        "PYTHONPATH": str(ROOT),
    }
    command = server_command(server, api_workers, settings.api_threads, port)
    query = capture_query(captures[0])
    bodies = [npy(x.iq) for x in captures]
    probe = Load(port, [], "", False, 0)
    try:
        with managed_process(command, log_dir / f"minimal-{server}.log", env) as handler:
            wait_until("the minimal handler", lambda: answers_health(probe), 60, handler, 0.3)
            Load(port, bodies, query, False, min(50, jobs), "warm").run(min(clients, 4))
            load = Load(port, bodies, query, False, jobs)
            meter = CpuMeter({"handler": [handler.pid], **service_roots()})
            meter.start()
            elapsed = load.run(clients)
            meter.stop()
        return {
            "jobs": len(load.submit_ms),
            "per_s": len(load.submit_ms) / elapsed,
            "load": load,
            "cpu": meter,
        }
    finally:
        drop(settings)


def server_command(server: str, workers: int, threads: int, port: int) -> list[str]:
    """The command serving the minimal handler under ``server`` (one of ``MINIMAL_SERVERS``).

    Raises:
        ValueError: a server the benchmark does not know.
    """
    if server == "gunicorn":
        return [
            *(sys.executable, "-m", "gunicorn", "--workers", str(workers)),
            *("--threads", str(threads), "--worker-class", "gthread" if threads > 1 else "sync"),
            *("--bind", f"127.0.0.1:{port}", "--timeout", "60", "tools.minimal_shim:app"),
            "--no-control-socket",  # not the default one another gunicorn on this host may hold
        ]
    if server == "granian":
        return [
            *(sys.executable, "-m", "granian", "--interface", "wsgi", "--workers", str(workers)),
            *("--blocking-threads", str(threads), "--host", "127.0.0.1", "--port", str(port)),
            *("--log-level", "warning", "tools.minimal_shim:app"),
        ]
    raise ValueError(f"unknown server {server!r}; known: {', '.join(MINIMAL_SERVERS)}")


def idle_latency(
    base: Settings, captures: list, jobs: int, api_workers: int, processes: int, log_dir: Path
) -> dict:
    """One client and an otherwise idle service: new captures (each submitted, then waited for
    with ``GET /jobs/<id>?wait=``), other new captures submitted and waited for in one request,
    then captures already answered (answered in the ``202`` itself)."""
    settings = own_settings(base, "i").model_copy(update={"cache_ttl_s": 600})
    prepare(settings)
    query = capture_query(captures[0])
    # Every capture new, as fresh noise makes them: a tiny gain per job.
    fresh = [
        npy(captures[n % len(captures)].iq * np.complex64(1.0 + 1e-6 * n))
        for n in range(2 * jobs + 20)
    ]
    try:
        with running_service(settings, api_workers, processes, log_dir, True) as (port, _):
            Load(port, fresh[2 * jobs :], query, True, 20, id_prefix="warm").run(1)
            new = Load(port, fresh[:jobs], query, True, jobs, id_prefix="new")
            new.run(1)
            # Other new captures, each submitted and waited for in one request.
            one = Load(port, fresh[jobs:], query, True, jobs, "one", submit_waits=True)
            one.run(1)
            # The captures of the first jobs again: their results are cached.
            again = Load(port, fresh[: min(50, jobs)], query, False, jobs, id_prefix="again")
            again.run(1)
        return {"new": new, "one": one, "again": again}
    finally:
        drop(settings)
