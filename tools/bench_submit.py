"""Benchmark: how long the HTTP shim takes to accept a capture (validate, store, record, publish).

Starts its own shim (gunicorn, real RabbitMQ/Redis/PostgreSQL of this machine) as the throughput
benchmark does (`tools/bench_service.running_service`, its logs in a folder of its own),
with a queue, key prefix and database schema of its own that it removes afterwards, then posts
captures one after another over HTTP and prints latency percentiles per submission format.
No worker runs: only the submission path is measured; the benchmark's queue is deleted at the end.

    python tools/bench_submit.py [--count 300] [--rate 12000] [--duration 1.0]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api_shim.client import ShimClient  # noqa: E402
from inference_worker.cli import bootstrap  # noqa: E402
from inference_worker.cli.arguments import count  # noqa: E402
from inference_worker.science.simulator import CaptureSimulator  # noqa: E402
from inference_worker.settings import PROCESSES_MAX, load_settings  # noqa: E402
from tools.bench_service import running_service  # noqa: E402
from tools.bench_stages import drop, own_settings  # noqa: E402
from tools.requirements import add_capture_size, capture_samples, run  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=count(1), default=300, help="submissions per format")
    add_capture_size(parser, 12_000.0, 1.0)
    parser.add_argument(
        "--api-workers",
        type=count(1, PROCESSES_MAX),
        default=1,
        help="gunicorn workers of the shim",
    )
    args = parser.parse_args()
    capture_samples(parser, args)

    base = load_settings()
    bootstrap.require_services(base)
    settings = own_settings(base, "u")  # its own queue, keys and schema, removed at the end
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
    logs = Path(tempfile.mkdtemp(prefix="heimdall-bench-"))
    results: dict[str, list[float]] = {"npy": [], "json (base64)": []}
    try:
        with running_service(settings, args.api_workers, 0, logs, False) as (port, _):
            client = ShimClient(f"http://127.0.0.1:{port}", timeout_s=10)
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
        drop(settings)

    print(f"\nsubmission latency over HTTP, {args.count} submissions per format (ms)")
    print(f"{'format':<15} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7} {'mean':>7}")
    for form, latencies in results.items():
        print(
            f"{form:<15} {percentile(latencies, 50):7.2f} {percentile(latencies, 90):7.2f} "
            f"{percentile(latencies, 99):7.2f} {max(latencies):7.2f} "
            f"{statistics.fmean(latencies):7.2f}"
        )
    return 0


if __name__ == "__main__":
    run(main)
