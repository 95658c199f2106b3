"""Benchmark: the service's throughput against its bare pipeline, measured in one run.

Five stages (and a variant of the third and of the fourth), each on a queue, Redis prefix and
PostgreSQL schema of its own (removed at the end), on this machine's real RabbitMQ, Redis and
PostgreSQL:

1. **bare pipeline**: decode ``.npy`` + sha256 + features + onnxruntime + ellipse in a loop, in
   as many processes as the worker has (BLAS pinned to one thread, as in the worker);
2. **worker path**: a queue filled by the producer client (no HTTP), then drained by a real
   ``heimdall-inference worker``; jobs/s from the jobs' own start and finish times;
3. **shim**: a real ``heimdall-inference api`` with no worker consuming, closed-loop clients
   submitting; submissions/s and CPU seconds of the shim's processes per accepted submission;
   **minimal**: the same for ``tools/minimal_shim.py``, a minimal Flask handler doing a
   submission's work and round trips and nothing else, under gunicorn with the shim's processes
   and threads: the shim's figure read against what this machine needs for the bare work today;
4. **service**: shim and worker together, closed-loop clients that submit and wait for the
   result (``GET /jobs/<id>?wait=``); jobs/s, submission and end-to-end percentiles;
   **service-wait**: the same, each client submitting and waiting in one request
   (``POST /predict?wait=``);
5. **idle**: one client and an otherwise idle service: new captures submitted and waited for
   (end-to-end latency as the client sees it), then captures already answered (resubmitted
   unchanged: answered in the ``202`` from the result cache).

For stages 2-4 it prints the CPU seconds per job of every process group: shim, workers,
RabbitMQ, Redis, PostgreSQL and the benchmark's own clients. ``--rounds N`` runs stages 1 and 2
N times, alternating, and prints the median of their ratios (this machine's speed drifts from
one minute to the next).

    python tools/bench_throughput.py [--preset 12k|12k-short|192k] [--jobs 2000] [--clients 16]
        [--stages bare,worker,shim,minimal,service,service-wait,idle] [--rounds 1]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inference_worker.cli import bootstrap  # noqa: E402
from inference_worker.cli.processes import (  # noqa: E402
    cli_process,
    managed_process,
    settings_env,
    wait_until,
)
from inference_worker.science.simulator import CaptureSimulator  # noqa: E402
from inference_worker.settings import Settings, load_settings  # noqa: E402
from tools.bench_clients import Load, answers_health, npy, pct  # noqa: E402
from tools.process_meter import (  # noqa: E402
    CLIENTS,
    CpuMeter,
    children,
    rss_mb,
    service_roots,
    tree_cpu_s,
)

PRESETS = {"12k": (12_000.0, 1.0), "12k-short": (12_000.0, 0.25), "192k": (192_000.0, 0.25)}


# --- stage 1: the bare pipeline ----------------------------------------------------------------
_MODEL: Any = None


def _init_bare(model_dir: str, retain_freed_mb: int) -> None:
    global _MODEL
    from threadpoolctl import threadpool_limits

    from inference_worker.serving.memory import retain_freed_memory
    from inference_worker.serving.onnx_model import LocalizationModel

    threadpool_limits(1)  # as a worker process is set up
    retain_freed_memory(retain_freed_mb)
    _MODEL = LocalizationModel(Path(model_dir))


def _bare_jobs(args: tuple[list[bytes], float]) -> int:
    from inference_worker.core.capture import decode_npy, iq_digest
    from inference_worker.core.domain import assess, clipped_share
    from inference_worker.core.ellipse import decode_output, describe
    from inference_worker.core.features import analyse

    bodies, rate = args
    meta = _MODEL.metadata
    for body in bodies:
        iq = decode_npy(body)
        iq_digest(iq)
        features, band = analyse(iq, rate, meta.features)  # the worker's maths, quality included
        assess(features, band, clipped_share(iq), meta.features, meta.receiver_ids, meta.domain)
        describe(decode_output(_MODEL.predict(features[None])[0], meta.outputs))
    return len(bodies)


def bare_pipeline(
    settings: Settings, bodies: list[bytes], rate: float, processes: int, rounds: int = 3
) -> tuple[float, float]:
    """Jobs per second of ``processes`` processes running the bare pipeline, and their CPU
    milliseconds per job: medians of ``rounds`` rounds (a round lasts a few seconds, and single
    rounds here vary by ±10 %)."""
    share = [bodies[i::processes] for i in range(processes)]
    context = multiprocessing.get_context("fork")
    rates, cpu_ms = [], []
    init = (str(settings.model_dir), settings.retain_freed_mb)
    with context.Pool(processes, _init_bare, init) as pool:
        pids = [p.pid for p in pool._pool]  # type: ignore[attr-defined]
        pool.map(_bare_jobs, [(b[:4], rate) for b in share])  # warm up
        for _ in range(rounds):
            started, cpu = time.perf_counter(), sum(tree_cpu_s(p) for p in pids)
            done = sum(pool.map(_bare_jobs, [(b, rate) for b in share]))
            rates.append(done / (time.perf_counter() - started))
            cpu_ms.append(1e3 * (sum(tree_cpu_s(p) for p in pids) - cpu) / done)
    return float(np.median(rates)), float(np.median(cpu_ms))


# --- the run -----------------------------------------------------------------------------------
def own_settings(base: Settings, stage: str) -> Settings:
    tag = f"{stage}{uuid.uuid4().hex[:6]}"
    return base.model_copy(
        update={
            "queue": f"heimdall.bench.{tag}",
            "redis_prefix": f"heimdall-bench:{tag}:",
            "database_schema": f"bench_{tag}",
            "worker_metrics_port": 0,
            "cache_ttl_s": 0,  # every capture is new here; duplicates are measured elsewhere
        }
    )


def drop(settings: Settings) -> None:
    import kombu
    import redis
    import sqlalchemy as sa

    from tasks.app import dead_letter_queue_name

    with kombu.Connection(settings.broker_url) as connection:
        for name in (settings.queue, dead_letter_queue_name(settings.queue)):
            connection.default_channel.queue_delete(name)
    client = redis.Redis.from_url(settings.redis_url)
    for key in client.scan_iter(match=f"{settings.redis_prefix}*", count=1000):
        client.delete(key)
    engine = sa.create_engine(settings.database_url, poolclass=sa.pool.NullPool)
    with engine.begin() as connection:
        connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{settings.database_schema}" CASCADE'))
    engine.dispose()


def prepare(settings: Settings) -> None:
    bootstrap.migrate_database(settings)
    bootstrap.declare_queues(settings)
    bootstrap.announce_model(settings)


class JobCounts:
    """Reads the stage's succeeded jobs over one pooled connection. Polling must cost the
    machine next to nothing: a new engine and connection per poll, with an aggregate over the
    jobs' JSON timings, cost about 11 ms of CPU (PostgreSQL's and this process's) every 0.1 s,
    taken from the cores the worker path is measured on."""

    def __init__(self, settings: Settings) -> None:
        from inference_worker.storage.engine import engine_for

        self.engine = engine_for(settings, pool_size=1)

    def __enter__(self) -> JobCounts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.engine.dispose()

    def done(self) -> int:
        """How many jobs succeeded so far (counted on the status index)."""
        import sqlalchemy as sa

        with self.engine.connect() as connection:
            query = "SELECT count(*) FROM jobs WHERE status = 'succeeded'"
            return int(connection.execute(sa.text(query)).scalar_one())

    def summary(self) -> tuple[int, float, float]:
        """Jobs succeeded, their rate from the first start to the last finish, and the mean
        size of the batches they ran in (as each job's timings record it)."""
        import sqlalchemy as sa

        with self.engine.connect() as connection:
            count, first, last, batch = connection.execute(
                sa.text(
                    "SELECT count(*), min(started_at), max(finished_at),"
                    " avg((timings->>'batch_size')::float8) FROM jobs WHERE status = 'succeeded'"
                )
            ).one()
        if not count:
            return 0, 0.0, 0.0
        return count, count / max((last - first).total_seconds(), 1e-9), batch or 0.0


def worker_path(base: Settings, captures: list, jobs: int, processes: int, log_dir: Path) -> dict:
    from tasks.producer import CaptureProducer

    settings = own_settings(base, "w")
    prepare(settings)
    env = settings_env(settings)
    try:
        with CaptureProducer(settings=settings) as producer:
            for n in range(jobs):
                c = captures[n % len(captures)]
                producer.submit(
                    c.iq,
                    sample_rate_hz=c.sample_rate_hz,
                    frequency_mhz=c.frequency_mhz,
                    receivers=c.receivers,
                )
        meter = CpuMeter({})
        with (
            JobCounts(settings) as counts,
            cli_process(
                ["worker", "--concurrency", str(processes)], log_dir / "worker.log", env
            ) as worker,
        ):
            meter.groups = {"workers": [worker.pid], **service_roots()}
            memory: list[tuple[int, float]] = []  # (jobs done, largest pool process RSS)
            metered_from: list[int] = []  # jobs done when the meter started

            def drained() -> bool:
                done = counts.done()
                if done and not metered_from:  # booted and working: start the CPU meter
                    meter.start()
                    metered_from.append(done)
                pool = children(worker.pid)
                if pool:
                    memory.append((done, max(rss_mb(child) for child in pool)))
                return done >= jobs

            wait_until("the queue drained", drained, 3600, worker, 0.1)
            meter.stop()
            done, rate, batch = counts.summary()
        return {
            "jobs": done,
            "jobs_per_s": rate,
            "batch": batch,
            "cpu": meter,
            "metered_jobs": done - metered_from[0],
            "memory": memory,
        }
    finally:
        drop(settings)


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


def minimal_handler(
    base: Settings, captures: list, jobs: int, clients: int, api_workers: int, log_dir: Path
) -> dict:
    """The shim's yardstick (``tools/minimal_shim.py``: the same work and round trips as a
    submission, nothing else) under gunicorn with the shim's processes and threads, driven and
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
    threads = settings.api_threads
    command = [
        *(sys.executable, "-m", "gunicorn", "--workers", str(api_workers)),
        *("--threads", str(threads), "--worker-class", "gthread" if threads > 1 else "sync"),
        *("--bind", f"127.0.0.1:{port}", "--timeout", "60", "tools.minimal_shim:app"),
    ]
    query = capture_query(captures[0])
    bodies = [npy(x.iq) for x in captures]
    probe = Load(port, [], "", False, 0)
    try:
        with managed_process(command, log_dir / "minimal.log", env) as handler:
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


def ratio_to(bare: float | None, value: float) -> str:
    """`` = 0.67x the bare pipeline`` when the bare pipeline ran in this run, else nothing."""
    return f" = {value / bare:.2f}x the bare pipeline" if bare else ""


def print_worker_path(found: dict[str, Any], bare: float | None, bare_cpu_ms: float) -> None:
    """The worker path's lines: jobs/s and ratio, CPU per job, the ceiling, pool memory."""
    print(
        f"worker path (producer-filled queue, drained): {found['jobs_per_s']:.1f} jobs/s"
        f"{ratio_to(bare, found['jobs_per_s'])}; jobs per batch {found['batch']:.1f} on average",
        flush=True,
    )
    metered = found["metered_jobs"]
    print(
        f"  CPU ms per job (while draining, boot excluded): {found['cpu'].per_job_ms(metered)}",
        flush=True,
    )
    if bare:
        used = found["cpu"].used
        all_ms = 1e3 * sum(s for n, s in used.items() if n != CLIENTS) / max(metered, 1)
        cores = os.cpu_count() or 1
        print(
            f"  in all {all_ms:.2f} ms CPU per job against the bare pipeline's "
            f"{bare_cpu_ms:.2f}: with every core busy the worker path could reach at most "
            f"{1e3 * cores / all_ms:.0f} jobs/s = {1e3 * cores / all_ms / bare:.2f}x",
            flush=True,
        )
    machine = found["cpu"].machine
    if machine:
        print(
            f"  the machine while draining: cores idle {100 * machine['idle']:.1f} % (I/O wait "
            f"included), kernel interrupt work no process is charged for "
            f"{100 * machine['interrupts']:.1f} %",
            flush=True,
        )
    memory = [m for m in found["memory"] if m[0] > 0]
    if len(memory) >= 2:
        early = next((m for m in memory if m[0] >= found["jobs"] // 10), memory[0])
        print(
            f"  largest pool process RSS: {early[1]:.0f} MB after {early[0]} jobs, "
            f"{memory[-1][1]:.0f} MB after {memory[-1][0]}; peak "
            f"{max(m[1] for m in memory):.0f} MB",
            flush=True,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="12k")
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per stage")
    parser.add_argument("--clients", type=int, default=16, help="closed-loop HTTP clients")
    parser.add_argument("--processes", type=int, help="worker processes (default: settings)")
    parser.add_argument("--api-workers", type=int, help="shim processes (default: settings)")
    parser.add_argument(
        "--stages",
        default="bare,worker,shim,minimal,service,service-wait,idle",
        help="comma-separated: bare, worker, shim, minimal (the shim's yardstick: the same work "
        "in a minimal handler), service, service-wait (one request a job: POST /predict?wait=), "
        "idle (one client)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the bare and worker stages this many times, alternating, and print the median "
        "ratio (the machine's speed drifts between runs)",
    )
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    base = load_settings()
    stages = set(args.stages.split(","))
    if stages - {"bare"}:  # every other stage runs against the stores and the broker
        bootstrap.require_services(base)
    processes = args.processes or base.worker_concurrency
    api_workers = args.api_workers or base.api_workers
    rate, duration = PRESETS[args.preset]
    rng = np.random.default_rng(7)
    simulator = CaptureSimulator()
    captures = [
        simulator.simulate(rng, sample_rate_hz=rate, duration_s=duration) for _ in range(16)
    ]
    print(
        f"preset {args.preset}: 3 receivers x {captures[0].iq.shape[1]} samples; {args.jobs} jobs "
        f"a stage; {processes} worker processes, {api_workers} shim processes, "
        f"{args.clients} clients; {os.cpu_count()} cores",
        flush=True,
    )
    log_dir = Path(tempfile.mkdtemp(prefix="heimdall-bench-"))
    bare, bare_cpu_ms = None, 0.0
    ratios: list[float] = []
    for round_no in range(1, args.rounds + 1):
        if args.rounds > 1:
            print(f"round {round_no} of {args.rounds}:", flush=True)
        if "bare" in stages:
            bodies = [npy(c.iq) for c in captures] * (args.jobs // len(captures) + 1)
            bare, bare_cpu_ms = bare_pipeline(base, bodies[: args.jobs], rate, processes)
            print(
                f"bare pipeline ({processes} processes): {bare:.1f} jobs/s, {bare_cpu_ms:.2f} ms "
                "CPU per job (medians of 3 rounds)",
                flush=True,
            )
        if "worker" in stages:
            found = worker_path(base, captures, args.jobs, processes, log_dir)
            print_worker_path(found, bare, bare_cpu_ms)
            if bare:
                ratios.append(found["jobs_per_s"] / bare)
    if len(ratios) > 1:
        print(
            f"worker path over {len(ratios)} rounds, each against the bare pipeline of its round: "
            f"median {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}x)",
            flush=True,
        )

    if "shim" in stages:
        found = shim_and_service(
            base, captures, args.jobs, args.clients, api_workers, processes, log_dir, False
        )
        load = found["load"]
        shim_ms = 1e3 * found["cpu"].used["shim"] / max(found["jobs"], 1)
        print(
            f"shim alone (no worker): {found['per_s']:.1f} submissions/s accepted, "
            f"{shim_ms:.2f} ms shim CPU per submission; submission {pct(load.submit_ms)}; "
            f"errors {len(load.errors)}",
            flush=True,
        )
        print(f"  CPU ms per submission: {found['cpu'].per_job_ms(found['jobs'])}", flush=True)
    if "minimal" in stages:
        found_minimal = minimal_handler(
            base, captures, args.jobs, args.clients, api_workers, log_dir
        )
        load = found_minimal["load"]
        minimal_ms = 1e3 * found_minimal["cpu"].used["handler"] / max(found_minimal["jobs"], 1)
        against = (
            f"; the shim's CPU per submission = {shim_ms / minimal_ms:.2f}x it"
            if ("shim" in stages)
            else ""
        )
        print(
            f"minimal handler (the same work, gunicorn as the shim's): {found_minimal['per_s']:.1f}"
            f" submissions/s, {minimal_ms:.2f} ms CPU per submission{against}; submission "
            f"{pct(load.submit_ms)}; errors {len(load.errors)}",
            flush=True,
        )
        jobs = found_minimal["jobs"]
        print(f"  CPU ms per submission: {found_minimal['cpu'].per_job_ms(jobs)}", flush=True)
    if "service" in stages:
        found = shim_and_service(
            base, captures, args.jobs, args.clients, api_workers, processes, log_dir, True
        )
        load = found["load"]
        print(
            f"service (shim + workers, {args.clients} clients): {found['per_s']:.1f} jobs/s"
            f"{ratio_to(bare, found['per_s'])}; submission {pct(load.submit_ms)}; "
            f"end to end {pct(load.end_to_end_ms)}; errors {len(load.errors)}",
            flush=True,
        )
        print(
            f"  CPU ms per job: {found['cpu'].per_job_ms(found['jobs'])}; "
            f"jobs per batch {found['batch']:.1f} on average",
            flush=True,
        )
    if "service-wait" in stages:
        found = shim_and_service(
            base, captures, args.jobs, args.clients, api_workers, processes, log_dir, True, True
        )
        load = found["load"]
        print(
            f"service, one request a job (POST /predict?wait=, {args.clients} clients): "
            f"{found['per_s']:.1f} jobs/s{ratio_to(bare, found['per_s'])}; end to end "
            f"{pct(load.end_to_end_ms)}; errors {len(load.errors)}",
            flush=True,
        )
        print(
            f"  CPU ms per job: {found['cpu'].per_job_ms(found['jobs'])}; "
            f"jobs per batch {found['batch']:.1f} on average",
            flush=True,
        )
    if "idle" in stages:
        found = idle_latency(base, captures, args.jobs // 5, api_workers, processes, log_dir)
        new, again = found["new"], found["again"]
        print(
            f"one client, idle service: new capture submission {pct(new.submit_ms)}; end to "
            f"end (?wait=) {pct(new.end_to_end_ms)}; errors {len(new.errors)}",
            flush=True,
        )
        one = found["one"]
        print(
            f"  new capture in one request (POST /predict?wait=): end to end "
            f"{pct(one.end_to_end_ms)}; errors {len(one.errors)}",
            flush=True,
        )
        print(
            f"  same capture again: answered in the 202 for {again.answered} of "
            f"{len(again.submit_ms)}; {pct(again.submit_ms)}; errors {len(again.errors)}",
            flush=True,
        )
    print(f"logs: {log_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
