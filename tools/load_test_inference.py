"""Load test of a running Heimdall inference service (local only).

Concurrent clients submit simulated captures to the HTTP shim and wait for each job with
long-polls (GET /jobs/<id>?wait=), so the clients cost the machine little; with
``--one-request`` they submit and wait in the same request (POST /predict?wait=).
Prints submission and end-to-end percentiles, throughput, cache hit rate and errors, with
progress while it runs, and writes a JSON report. It stops by itself (after ``--count``
captures or ``--seconds``) and refuses any address that is not on this machine.

    heimdall-inference worker &  heimdall-inference api &
    python tools/load_test_inference.py --clients 100 --preset 12k --count 2000
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api_shim.client import LONG_POLL_S, ShimClient, ShimError  # noqa: E402
from inference_worker.cli.arguments import count, number  # noqa: E402
from inference_worker.science.simulator import CaptureSimulator  # noqa: E402
from inference_worker.settings import load_settings  # noqa: E402
from inference_worker.urls import base_url  # noqa: E402
from tools.requirements import Terminated, run  # noqa: E402

PRESETS = {"12k": (12_000.0, 1.0), "192k": (192_000.0, 0.25)}


@dataclass
class Tally:
    submit_ms: list[float] = field(default_factory=list)
    server_end_to_end_ms: list[float] = field(default_factory=list)
    client_end_to_end_ms: list[float] = field(default_factory=list)
    submitted: int = 0
    succeeded: int = 0
    failed_jobs: int = 0
    errors: int = 0
    cache_hits: int = 0
    error_samples: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def error(self, text: str) -> None:
        with self.lock:
            self.errors += 1
            if len(self.error_samples) < 10:
                self.error_samples.append(text)


def require_local(url: str) -> None:
    host = urllib.parse.urlparse(url).hostname or ""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        raise SystemExit(f"error: cannot resolve {host!r}") from None
    if not all(ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in addresses):
        raise SystemExit(
            f"error: {url} is not on this machine; the load test only targets loopback"
        )


def run_clients(client: Callable[[int], None], clients: int, stop: threading.Event) -> bool:
    """Run ``clients`` clients to their end; returns whether Ctrl-C cut the run short. The
    first Ctrl-C sets ``stop`` (no more submissions) and waits for the jobs in flight, so the
    report covers what was sent; a second one, or SIGTERM, quits at once. A client's unexpected error is
    raised here once they have all ended."""
    failures: list[BaseException] = []

    def guarded(index: int) -> None:
        try:
            client(index)
        except Exception as exc:
            failures.append(exc)
            stop.set()

    threads = [threading.Thread(target=guarded, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    interrupted = False
    try:
        for thread in threads:
            thread.join()
    except Terminated:  # SIGTERM: a scheduler wants it gone now, not after the jobs in flight
        raise
    except KeyboardInterrupt:
        interrupted = True
        stop.set()
        print(
            "\ninterrupted: no more submissions; waiting for the jobs in flight "
            "(Ctrl-C again to quit at once)",
            file=sys.stderr,
            flush=True,
        )
        for thread in threads:
            thread.join()
    if failures:
        raise failures[0]
    return interrupted


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    array = np.asarray(values)
    return {
        "p50": float(np.percentile(array, 50)),
        "p95": float(np.percentile(array, 95)),
        "p99": float(np.percentile(array, 99)),
        "max": float(array.max()),
    }


def main() -> int:
    settings = load_settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=base_url(settings.api_host, settings.api_port))
    parser.add_argument("--clients", type=count(1), default=100, help="concurrent clients")
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="12k",
        help="12k: 12 kHz x 1 s; 192k: 192 kHz x 0.25 s",
    )
    parser.add_argument(
        "--duplicates",
        type=number(0.0, 1.0),
        default=0.1,
        help="share of submissions that resend an earlier capture unchanged",
    )
    parser.add_argument("--count", type=count(1), default=1000, help="captures to submit in all")
    positive = number(0.0, above=True)
    parser.add_argument(
        "--seconds", type=positive, default=300.0, help="stop submitting after this"
    )
    parser.add_argument("--job-timeout", type=positive, default=60.0)
    parser.add_argument(
        "--one-request",
        action="store_true",
        help="submit and wait in one request (POST /predict?wait=); submission latency is then "
        "only measured for answers that came back before the job was final",
    )
    parser.add_argument("--report", type=Path, default=ROOT / "var" / "load-test.json")
    parser.add_argument(
        "--seed",
        type=int,
        help="simulation seed (default: a new one, so no capture repeats an earlier run's)",
    )
    args = parser.parse_args()
    require_local(args.url)

    client = ShimClient(args.url, timeout_s=30)
    try:
        status, health = client.health()
    except OSError as exc:  # the client's error names the address and the command to start
        raise SystemExit(f"error: {exc}") from None
    if status != 200 or not health["checks"]["model"]["ok"]:
        raise SystemExit(f"error: the service is not ready: {json.dumps(health)[:400]}")

    rate, duration = PRESETS[args.preset]
    simulator = CaptureSimulator()
    if args.seed is None:
        args.seed = int(time.time() * 1000) % 1_000_000
    rng = np.random.default_rng(args.seed)
    pool = [simulator.simulate(rng, sample_rate_hz=rate, duration_s=duration) for _ in range(64)]
    print(
        f"{args.clients} clients, {args.count} captures of {rate / 1e3:g} kHz x {duration:g} s, "
        f"{args.duplicates:.0%} duplicates, against {args.url}"
        + ("; submitting and waiting in one request" if args.one_request else ""),
        flush=True,
    )

    tally = Tally()
    sent: list[int] = []
    counter = iter(range(args.count))
    counter_lock = threading.Lock()
    started = time.monotonic()
    deadline = started + args.seconds

    def capture_bytes(number: int) -> np.ndarray:
        """Capture ``number``: a pool capture made unique (as fresh noise would) by a tiny gain."""
        return pool[number % len(pool)].iq * np.complex64(1.0 + 1e-6 * number)

    def one_client(index: int) -> None:
        local = random.Random(args.seed * 1000 + index)
        own = ShimClient(args.url, timeout_s=30)
        receivers = list(pool[0].receivers)
        while time.monotonic() < deadline and not stop.is_set():
            with counter_lock:
                number = next(counter, None)
                if number is None:
                    return
                if sent and local.random() < args.duplicates:
                    number = local.choice(sent)  # resend an earlier capture unchanged
                else:
                    sent.append(number)
            capture_iq = capture_bytes(number)
            submit_started = time.perf_counter()
            try:
                accepted = own.submit_npy(
                    capture_iq,
                    sample_rate_hz=rate,
                    frequency_mhz=pool[0].frequency_mhz,
                    receivers=receivers,
                    wait_s=min(args.job_timeout, LONG_POLL_S) if args.one_request else 0.0,
                )
            except (ShimError, OSError) as exc:
                tally.error(f"submit: {exc}")
                continue
            submit_ms = (time.perf_counter() - submit_started) * 1e3
            answered = args.one_request and accepted["status"] in ("succeeded", "failed")
            with tally.lock:
                tally.submitted += 1
                if not answered:
                    tally.submit_ms.append(submit_ms)
            try:
                view = accepted if answered else own.wait(accepted["job_id"], args.job_timeout)
            except (ShimError, OSError, TimeoutError) as exc:
                tally.error(f"wait: {exc}")
                continue
            client_ms = (time.perf_counter() - submit_started) * 1e3
            with tally.lock:
                if view["status"] == "succeeded":
                    tally.succeeded += 1
                    tally.cache_hits += bool(view["cache_hit"])
                    tally.server_end_to_end_ms.append(view["timings"]["end_to_end_ms"])
                    tally.client_end_to_end_ms.append(client_ms)
                else:
                    tally.failed_jobs += 1
                    if len(tally.error_samples) < 10:
                        tally.error_samples.append(f"job failed: {view['error']}")

    stop_progress, stop = threading.Event(), threading.Event()

    def progress() -> None:
        while not stop_progress.wait(2.0):
            elapsed = time.monotonic() - started
            with tally.lock:
                print(
                    f"  {elapsed:5.0f} s: {tally.submitted} submitted, {tally.succeeded} done, "
                    f"{tally.errors + tally.failed_jobs} errors, {tally.succeeded / elapsed:.0f} jobs/s",
                    flush=True,
                )

    reporter = threading.Thread(target=progress, daemon=True)
    reporter.start()
    interrupted = run_clients(one_client, args.clients, stop)
    stop_progress.set()
    elapsed = time.monotonic() - started

    report = {
        "when": datetime.now(UTC).isoformat(),
        "url": args.url,
        "clients": args.clients,
        "one_request": args.one_request,
        "preset": args.preset,
        "sample_rate_hz": rate,
        "duration_s": duration,
        "duplicates": args.duplicates,
        "elapsed_s": elapsed,
        "interrupted": interrupted,
        "submitted": tally.submitted,
        "succeeded": tally.succeeded,
        "failed_jobs": tally.failed_jobs,
        "errors": tally.errors,
        "throughput_jobs_per_s": tally.succeeded / elapsed,
        "cache_hit_rate": tally.cache_hits / max(tally.succeeded, 1),
        "submission_ms": percentiles(tally.submit_ms),
        "end_to_end_ms_server": percentiles(tally.server_end_to_end_ms),
        "end_to_end_ms_client": percentiles(tally.client_end_to_end_ms),
        "error_samples": tally.error_samples,
    }
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2) + "\n")

    def row(name: str, values: dict[str, float | None]) -> str:
        cells = " ".join(
            f"{values[k]:8.1f}" if values[k] is not None else f"{'-':>8}"
            for k in ("p50", "p95", "p99", "max")
        )
        return f"{name:<32} {cells}"

    print(f"\n{'latency (ms)':<32} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8}")
    print(row("submission", report["submission_ms"]))
    print(row("end to end (server clock)", report["end_to_end_ms_server"]))
    how = "one request" if args.one_request else "long-poll"
    print(row(f"end to end (client, {how})", report["end_to_end_ms_client"]))
    print(
        f"\nthroughput {report['throughput_jobs_per_s']:.1f} jobs/s over {elapsed:.1f} s; "
        f"{tally.succeeded} succeeded, {tally.failed_jobs} failed, {tally.errors} errors; "
        f"cache hit rate {report['cache_hit_rate']:.1%} (duplicates sent: {args.duplicates:.0%})"
    )
    print(f"report: {args.report}" + (" (interrupted: a partial run)" if interrupted else ""))
    if interrupted:
        return 130
    return 0 if tally.errors == 0 and tally.failed_jobs == 0 else 1


if __name__ == "__main__":
    run(main)
