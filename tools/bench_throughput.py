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
   and threads: the shim's figure read against what this machine needs for the bare work today
   (``--minimal-servers gunicorn,granian,...`` runs it under each server listed, in turn);
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
        [--minimal-servers gunicorn]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inference_worker.cli import bootstrap  # noqa: E402
from inference_worker.cli.arguments import count  # noqa: E402
from inference_worker.science.simulator import CaptureSimulator  # noqa: E402
from inference_worker.settings import PROCESSES_MAX, load_settings  # noqa: E402
from tools.bench_clients import npy, pct  # noqa: E402
from tools.bench_pipeline import bare_pipeline, print_worker_path, worker_path  # noqa: E402
from tools.bench_service import (  # noqa: E402
    MINIMAL_SERVERS,
    idle_latency,
    minimal_handler,
    shim_and_service,
)
from tools.bench_stages import ratio_to  # noqa: E402
from tools.requirements import require, run  # noqa: E402

STAGES = ("bare", "worker", "shim", "minimal", "service", "service-wait", "idle")
STAGES_LEAST_JOBS = 10
"""Fewest jobs a stage (the idle stage times a fifth of them: two at least)."""
PRESETS = {"12k": (12_000.0, 1.0), "12k-short": (12_000.0, 0.25), "192k": (192_000.0, 0.25)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="12k")
    parser.add_argument(
        "--jobs", type=count(STAGES_LEAST_JOBS), default=2000, help="jobs per stage"
    )
    parser.add_argument("--clients", type=count(1), default=16, help="closed-loop HTTP clients")
    parser.add_argument(
        "--processes", type=count(1, PROCESSES_MAX), help="worker processes (default: settings)"
    )
    parser.add_argument(
        "--api-workers", type=count(1, PROCESSES_MAX), help="shim processes (default: settings)"
    )
    parser.add_argument(
        "--stages",
        default=",".join(STAGES),
        help="comma-separated: bare, worker, shim, minimal (the shim's yardstick: the same work "
        "in a minimal handler), service, service-wait (one request a job: POST /predict?wait=), "
        "idle (one client)",
    )
    parser.add_argument(
        "--rounds",
        type=count(1),
        default=1,
        help="run the bare and worker stages this many times, alternating, and print the median "
        "ratio (the machine's speed drifts between runs)",
    )
    parser.add_argument(
        "--minimal-servers",
        default="gunicorn",
        help="comma-separated servers to run the minimal stage under, in turn (repeat them to "
        "alternate): gunicorn (the shim's), granian (the 'dev' extra)",
    )
    args = parser.parse_args()

    def names(option: str, text: str, known: tuple[str, ...]) -> list[str]:
        given = text.split(",")
        unknown = sorted(set(given) - set(known))
        if unknown:
            parser.error(f"unknown {option} {', '.join(unknown)}; known: {', '.join(known)}")
        return given

    servers = names("--minimal-servers", args.minimal_servers, MINIMAL_SERVERS)
    if "granian" in servers:
        require("granian", "dev", "serving the minimal handler with granian")
    stages = set(names("--stages", args.stages, STAGES))
    base = load_settings()
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
    for server in servers if "minimal" in stages else []:
        found_minimal = minimal_handler(
            base, captures, args.jobs, args.clients, api_workers, log_dir, server
        )
        load = found_minimal["load"]
        minimal_ms = 1e3 * found_minimal["cpu"].used["handler"] / max(found_minimal["jobs"], 1)
        against = (
            f"; the shim's CPU per submission = {shim_ms / minimal_ms:.2f}x it"
            if ("shim" in stages)
            else ""
        )
        under = (
            "gunicorn as the shim's" if server == "gunicorn" else f"{server}, the shim's threads"
        )
        print(
            f"minimal handler (the same work, {under}): {found_minimal['per_s']:.1f}"
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
    run(main)
