"""A soak of the whole service under faults: clients submit fresh captures while processes are
killed and the stores go silent, then every accepted job is read back.

A shim and a worker (on a queue, Redis prefix and PostgreSQL schema of their own, removed
afterwards) reach PostgreSQL, Redis and RabbitMQ through relays that can go silent
(``tools/silent_relay.py``: connections kept open, nothing passed, as a paused server or a
stalled host). Closed-loop clients submit fresh 12 kHz × 1 s captures under job ids of their own,
retrying a refused one under the same id as a careful client does. Every few seconds one fault,
drawn at random (``tools/chaos_faults.py``): a worker pool process or a shim process killed, the
whole worker or shim killed and started again, a store silent for a while (also past its
statement and socket limits), or back as a host that restarted. Then every
accepted job is waited for, and its row and its copy in Redis read: exit status 1 when one did
not succeed, or Redis still holds the note of a queued job for a final one.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api_shim.client import ShimClient, ShimError  # noqa: E402
from inference_worker.cli.arguments import count, number  # noqa: E402
from inference_worker.settings import Settings, load_settings  # noqa: E402
from inference_worker.storage.statuses import FINAL_STATUSES  # noqa: E402
from tools.bench_service import running_service  # noqa: E402
from tools.bench_stages import drop, own_settings, prepare  # noqa: E402
from tools.chaos_faults import FAULTS, Relays, Restarts, fault_loop  # noqa: E402
from tools.requirements import run  # noqa: E402


@dataclass
class Tally:
    accepted: list[str] = field(default_factory=list)
    given_up: list[str] = field(default_factory=list)
    refusals: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)


def submit_loop(
    url: str, captures: list, number: int, stop: threading.Event, tally: Tally, retries: int
) -> None:
    """One closed-loop client: a fresh capture under a new job id, retried under the same id
    after a refusal (up to ``retries`` times, waiting a little longer each time)."""
    client = ShimClient(url, timeout_s=60)
    sent = 0
    while not stop.is_set():
        sent += 1
        job_id = str(uuid.uuid4())
        capture = captures[(number * 7 + sent) % len(captures)]
        iq = capture.iq * np.complex64(1.0 + 1e-6 * (number * 1_000_000 + sent))
        for attempt in range(retries + 1):
            try:
                client.submit_npy(
                    iq,
                    sample_rate_hz=capture.sample_rate_hz,
                    frequency_mhz=capture.frequency_mhz,
                    receivers=list(capture.receivers),
                    job_id=job_id,
                )
            except (ShimError, OSError) as exc:
                with tally.lock:
                    tally.refusals[str(exc).split(" (")[0][:90]] += 1
                time.sleep(0.5 * (attempt + 1))
                client = ShimClient(url, timeout_s=60)  # a connection the shim dropped is gone
                continue
            with tally.lock:
                tally.accepted.append(job_id)
            break
        else:
            with tally.lock:
                tally.given_up.append(job_id)


def read_back(
    url: str, settings: Settings, tally: Tally, drain_s: float
) -> tuple[Counter[str], Counter[str], int, dict[str, str]]:
    """Wait for every accepted job; its final states, the reasons of those that did not
    succeed, how many copies in Redis are not final, and what became of each given-up id."""
    import sqlalchemy as sa

    from inference_worker.storage.redis_store import RedisStore, connect

    client = ShimClient(url, timeout_s=60)
    states: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    deadline = time.monotonic() + drain_s
    for job_id in tally.accepted:
        try:
            view = client.wait(job_id, max(1.0, deadline - time.monotonic()))
        except TimeoutError:
            view = {"status": "not final", "error": None}
        states[view["status"]] += 1
        if view["status"] != "succeeded":
            reasons[str(view.get("error"))[:120]] += 1
    store = RedisStore(connect(settings.redis_url), settings.redis_prefix)
    stale = 0
    for job_id in tally.accepted:
        copy = store.get_result_json(job_id)
        stale += copy is not None and json.loads(copy).get("status") not in FINAL_STATUSES
    store.client.close()
    engine = sa.create_engine(settings.database_url, poolclass=sa.pool.NullPool)
    rows: dict[str, str] = {}
    if tally.given_up:
        query = sa.text(
            f'SELECT job_id, status, error FROM "{settings.database_schema}".jobs '
            "WHERE job_id = ANY(:ids)"
        )
        with engine.connect() as connection:
            for job_id, status, error in connection.execute(query, {"ids": tally.given_up}):
                rows[job_id] = f"{status}: {error}" if error else status
    engine.dispose()
    return states, reasons, stale, rows


def main() -> int:
    from inference_worker.science.simulator import CaptureSimulator

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    positive = number(0.0, above=True)
    parser.add_argument("--seconds", type=positive, default=240.0, help="how long clients submit")
    parser.add_argument("--clients", type=count(1), default=4)
    parser.add_argument(
        "--retries", type=count(0), default=5, help="a refused submission's retries"
    )
    parser.add_argument(
        "--every",
        type=number(0.1, 3600.0),
        nargs=2,
        default=(8.0, 15.0),
        metavar=("MIN", "MAX"),
        help="seconds between faults, drawn between MIN and MAX",
    )
    parser.add_argument(
        "--faults", default=",".join(FAULTS), help=f"comma-separated, of: {', '.join(FAULTS)}"
    )
    parser.add_argument(
        "--drain-s", type=positive, default=300.0, help="how long to wait for the last jobs"
    )
    parser.add_argument(
        "--overlap",
        action="store_true",
        help="start each fault while the ones before still last (never two on one store or "
        "process group)",
    )
    parser.add_argument("--seed", type=count(0), default=None)
    args = parser.parse_args()
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown or not faults:
        parser.error(f"unknown --faults {', '.join(unknown)}; known: {', '.join(FAULTS)}")
    if args.every[0] > args.every[1]:
        parser.error("--every MIN MAX: MIN is more than MAX")
    seed = args.seed if args.seed is not None else int(time.time()) % 1_000_000
    rng = random.Random(seed)
    simulator = CaptureSimulator()
    generator = np.random.default_rng(seed)
    captures = [
        simulator.simulate(generator, sample_rate_hz=12_000.0, duration_s=1.0) for _ in range(16)
    ]

    settings = own_settings(load_settings(), "chaos")
    log_dir = Path(tempfile.mkdtemp(prefix="heimdall-chaos-"))
    print(
        f"{args.clients} clients for {args.seconds:g} s, a fault every {args.every[0]:g}-"
        f"{args.every[1]:g} s{', overlapping' if args.overlap else ''} among "
        f"{', '.join(faults)} (seed {seed}); logs: {log_dir}",
        flush=True,
    )
    prepare(settings)
    relays = Relays(settings)
    tally = Tally()
    try:
        with (
            running_service(relays.settings, 2, 2, log_dir, True) as (port, groups),
            Restarts(relays.settings, port, groups, log_dir) as restarts,
        ):
            url = f"http://127.0.0.1:{port}"
            stop = threading.Event()
            started = time.monotonic()
            threads = [
                threading.Thread(
                    target=submit_loop, args=(url, captures, n, stop, tally, args.retries)
                )
                for n in range(args.clients)
            ]
            faulting = threading.Thread(
                target=fault_loop,
                args=(
                    relays,
                    restarts,
                    faults,
                    tuple(args.every),
                    stop,
                    started,
                    rng,
                    args.overlap,
                ),
            )
            for thread in (*threads, faulting):
                thread.start()
            try:
                while (left := args.seconds - (time.monotonic() - started)) > 0:
                    time.sleep(min(10.0, left))
                    print(
                        f"  {time.monotonic() - started:6.1f} s  accepted {len(tally.accepted)}, "
                        f"refused {sum(tally.refusals.values())}, given up {len(tally.given_up)}",
                        flush=True,
                    )
            finally:  # Ctrl-C or SIGTERM too: the clients and the faults stop, the stores speak
                stop.set()
                for thread in (*threads, faulting):
                    thread.join()
            waited = time.monotonic()
            states, reasons, stale, given_up = read_back(url, settings, tally, args.drain_s)
            waited = time.monotonic() - waited
    finally:
        relays.close()
        drop(settings)
    print(f"refusals: {dict(tally.refusals.most_common())}")
    print(
        f"accepted {len(tally.accepted)}: {dict(states)}, read back in {waited:.0f} s; "
        f"copies in Redis not final: {stale}"
    )
    for reason, times in reasons.most_common():
        print(f"  {times} not succeeded: {reason}")
    print(f"given up after {args.retries + 1} refusals: {len(tally.given_up)}")
    for job_id in tally.given_up:
        print(f"  {job_id}: {given_up.get(job_id, 'no row')}")
    return 0 if states.get("succeeded", 0) == len(tally.accepted) and stale == 0 else 1


if __name__ == "__main__":
    run(main)
