"""Benchmark: how long the HTTP shim takes to accept a capture (validate, store, record, publish).

Starts its own shim (gunicorn, real RabbitMQ/Redis/PostgreSQL of this machine) on a free port,
with a queue, key prefix and database schema of its own that it removes afterwards, then posts
captures one after another over HTTP and prints latency percentiles per submission format.
No worker runs: only the submission path is measured; the benchmark's queue is deleted at the end.

    python tools/bench_submit.py [--count 300] [--rate 12000] [--duration 1.0]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import kombu
import numpy as np
import redis
import sqlalchemy as sa

from api_shim.client import ShimClient
from inference_worker.cli.processes import cli_process, wait_until
from inference_worker.science.simulator import CaptureSimulator
from inference_worker.settings import load_settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300, help="submissions per format")
    parser.add_argument("--rate", type=float, default=12_000.0, help="sample rate, Hz")
    parser.add_argument("--duration", type=float, default=1.0, help="capture length, s")
    parser.add_argument("--api-workers", type=int, default=1, help="gunicorn workers of the shim")
    args = parser.parse_args()

    base = load_settings()
    tag = uuid.uuid4().hex[:8]
    port = free_port()
    env = {
        **os.environ,
        "HEIMDALL_QUEUE": f"heimdall.bench.{tag}",
        "HEIMDALL_REDIS_PREFIX": f"heimdall-bench:{tag}:",
        "HEIMDALL_DATABASE_SCHEMA": f"bench_{tag}",
        "HEIMDALL_API_PORT": str(port),
    }
    client = ShimClient(f"http://127.0.0.1:{port}", timeout_s=10)
    simulator = CaptureSimulator()
    rng = np.random.default_rng(0)
    captures = [
        simulator.simulate(rng, sample_rate_hz=args.rate, duration_s=args.duration)
        for _ in range(8)
    ]
    size_mb = captures[0].iq.nbytes / 1e6
    print(
        f"capture: 3 receivers x {captures[0].iq.shape[1]} samples "
        f"({args.rate / 1e3:g} kHz, {args.duration:g} s, {size_mb:.2f} MB complex64)"
    )
    log_path = Path(tempfile.gettempdir()) / f"heimdall-bench-{tag}.log"
    results: dict[str, list[float]] = {"npy": [], "json (base64)": []}
    try:
        with cli_process(["api", "--workers", str(args.api_workers)], log_path, env) as shim:
            wait_until("the shim", lambda: _up(client), 30, shim)
            for form, latencies in results.items():
                for i in range(args.count + 10):
                    capture = captures[i % len(captures)]
                    fields = {
                        "sample_rate_hz": capture.sample_rate_hz,
                        "frequency_mhz": capture.frequency_mhz,
                        "receivers": list(capture.receivers),
                    }
                    document = ShimClient.json_document(capture.iq, **fields)  # type: ignore[arg-type]
                    started = time.perf_counter()
                    if form == "npy":
                        client.submit_npy(capture.iq, **fields)  # type: ignore[arg-type]
                    else:
                        client.submit_json(document)
                    elapsed = (time.perf_counter() - started) * 1e3
                    if i >= 10:  # the first few warm up connections and caches
                        latencies.append(elapsed)
                    if (i + 1) % 100 == 0:
                        print(f"  {form}: {i + 1}/{args.count + 10}", file=sys.stderr, flush=True)
    finally:
        _clean(base.broker_url, base.redis_url, base.database_url, env)

    print(f"\nsubmission latency over HTTP, {args.count} submissions per format (ms)")
    print(f"{'format':<15} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7} {'mean':>7}")
    for form, latencies in results.items():
        print(
            f"{form:<15} {percentile(latencies, 50):7.2f} {percentile(latencies, 90):7.2f} "
            f"{percentile(latencies, 99):7.2f} {max(latencies):7.2f} "
            f"{statistics.fmean(latencies):7.2f}"
        )
    return 0


def _up(client: ShimClient) -> bool:
    try:
        return client.health()[0] in (200, 503)
    except OSError:
        return False


def _clean(broker_url: str, redis_url: str, database_url: str, env: dict[str, str]) -> None:
    with kombu.Connection(broker_url) as connection:
        connection.default_channel.queue_delete(env["HEIMDALL_QUEUE"])
        connection.default_channel.exchange_delete(env["HEIMDALL_QUEUE"])
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=env["HEIMDALL_REDIS_PREFIX"] + "*", count=1000))
    if keys:
        client.delete(*keys)
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    with engine.begin() as connection:
        connection.execute(
            sa.text(f'DROP SCHEMA IF EXISTS "{env["HEIMDALL_DATABASE_SCHEMA"]}" CASCADE')
        )
    engine.dispose()


if __name__ == "__main__":
    raise SystemExit(main())
