"""Benchmark: what a TDoA submission costs the shim, and how long its client waits for the 202.

A real ``heimdall-inference api`` with no worker consuming, on a queue, Redis prefix and
PostgreSQL schema of its own (removed at the end, with every set it accepted), on this
machine's real RabbitMQ, Redis and PostgreSQL; one client posts synthetic KiwiSDR sets
(:mod:`inference_worker.science.kiwi_sets`, no quirks) of each receiver count, one at a time
on a kept-alive connection, each multipart body encoded before its clock starts. Prints, per
receiver count: the files' size, the submission's median and 90th percentile as the client
sees it, the CPU milliseconds per submission of the shim's processes and of Redis, RabbitMQ
and PostgreSQL (every submission holds its files in Redis until a worker takes it: the
stage's own prefix is emptied after each receiver count), the memory the shim's processes
faulted in per submission (near 0 where each reuses what it freed) and the resident memory of
the largest after the row (it keeps what its largest request needed).

    python tools/bench_tdoa_submit.py [--submissions 30] [--receivers 3 5 12] [--seconds 30]
        [--rate 12000|20250]
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from urllib3 import encode_multipart_formdata

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inference_worker.cli import bootstrap  # noqa: E402
from inference_worker.cli.arguments import count  # noqa: E402
from inference_worker.science.kiwi_sets import spacing_for, synthetic_set  # noqa: E402
from inference_worker.settings import load_settings  # noqa: E402
from tools.bench_service import running_service  # noqa: E402
from tools.bench_stages import drop, empty_prefix, own_settings, prepare  # noqa: E402
from tools.process_meter import CpuMeter, children, faulted_mb, rss_mb, service_roots  # noqa: E402
from tools.requirements import RECORDING_ALL_LOCATED_S, run  # noqa: E402

WARM_UP = 3
"""Submissions of each receiver count sent before the clock starts, not counted."""


def post(connection: http.client.HTTPConnection, body: bytes, content_type: str) -> int:
    """The status of one submission; a refusal ends the benchmark with the shim's reason."""
    connection.request("POST", "/predict", body=body, headers={"Content-Type": content_type})
    response = connection.getresponse()
    answer = response.read()
    if response.status != 202:
        try:
            reason = json.loads(answer)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            reason = answer[:300].decode(errors="replace")
        print(
            f"error: the shim refused a submission ({response.status}): {reason}", file=sys.stderr
        )
        raise SystemExit(1)
    return response.status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--submissions", type=count(1), default=30, help="timed, per row")
    parser.add_argument("--receivers", type=count(3), nargs="+", default=[3, 5, 12])
    parser.add_argument(
        "--seconds", type=RECORDING_ALL_LOCATED_S, default=30.0, help="each recording's length"
    )
    parser.add_argument(
        "--rate", type=int, choices=(12_000, 20_250), default=12_000, help="the files' IQ rate"
    )
    parser.add_argument("--api-workers", type=count(1), default=None, help="shim processes")
    args = parser.parse_args()
    base = load_settings()
    bootstrap.require_services(base)
    settings = own_settings(base, "t")
    prepare(settings)
    api_workers = args.api_workers or base.api_workers
    print(
        f"{api_workers} shim processes, no worker; {args.submissions} submissions a row, one "
        "at a time",
        flush=True,
    )
    print(
        f"{'rx':>3} {'MB':>6} {'median ms':>10} {'90th ms':>8} {'shim CPU ms':>12} "
        f"{'Redis':>6} {'RabbitMQ':>9} {'PostgreSQL':>11} {'faulted MB':>11} {'RSS MB':>7}"
    )
    try:
        with running_service(
            settings, api_workers, 0, Path(tempfile.mkdtemp(prefix="heimdall-bench-")), False
        ) as (port, groups):
            for receivers in args.receivers:
                rng = np.random.default_rng(7000 + receivers)
                recordings = synthetic_set(
                    rng,
                    receivers=receivers,
                    seconds=args.seconds,
                    quirks=False,
                    spacing_m=spacing_for(receivers),
                    sample_rate_hz=args.rate,
                )
                fields = [
                    ("receivers", json.dumps(recordings.positions())),
                    ("frequency_mhz", str(recordings.frequency_hz / 1e6)),
                ]
                files = [
                    ("capture", (name, data, "audio/wav"))
                    for name, data in zip(recordings.names, recordings.files, strict=True)
                ]
                times, meter = [], CpuMeter({**groups, **service_roots()})
                # A connection of its own: making the set took longer than the server keeps
                # an idle one open.
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                for number in range(WARM_UP + args.submissions):
                    if number == WARM_UP:
                        meter.start()
                        faulted = sum(map(faulted_mb, children(groups["shim"][0])))
                    job = ("job_id", f"bench-{receivers}-{number}-{time.time_ns()}")
                    body, content_type = encode_multipart_formdata([*fields, job, *files])
                    started = time.perf_counter()
                    post(connection, body, content_type)
                    if number >= WARM_UP:
                        times.append((time.perf_counter() - started) * 1e3)
                meter.stop()
                shim = children(groups["shim"][0])
                faulted = (sum(map(faulted_mb, shim)) - faulted) / args.submissions
                connection.close()
                per = {name: 1e3 * s / args.submissions for name, s in meter.used.items()}
                megabytes = sum(len(f) for f in recordings.files) / 1e6
                print(
                    f"{receivers:>3} {megabytes:>6.1f} {np.median(times):>10.1f} "
                    f"{np.percentile(times, 90):>8.1f} {per['shim']:>12.1f} "
                    f"{per['Redis']:>6.1f} {per['RabbitMQ']:>9.1f} {per['PostgreSQL']:>11.1f} "
                    f"{faulted:>11.1f} {max(map(rss_mb, shim), default=0.0):>7.0f}",
                    flush=True,
                )
                empty_prefix(settings)  # the sets' files: no worker takes them here
    finally:
        drop(settings)


if __name__ == "__main__":
    run(main)
