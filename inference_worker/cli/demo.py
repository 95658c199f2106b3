"""The demo: the whole path on the local services, from simulated captures to printed estimates.

Uses a running shim and worker when there are some; otherwise starts them and stops them after.
"""

from __future__ import annotations

import functools
import os
import subprocess
import tempfile
import time
import urllib.error
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np

from api_shim.client import ShimClient, ShimError, starting_answer
from inference_worker.cli import bootstrap
from inference_worker.cli.processes import cli_process, wait_until
from inference_worker.core.contract import ModelError, load_metadata
from inference_worker.core.ellipse import distance_m, inside_drawn_ellipse
from inference_worker.science.simulator import CaptureSimulator
from inference_worker.serving.api_check import a_key
from inference_worker.settings import Settings
from inference_worker.urls import base_url

# (sample rate, duration, submission format): the rates real receivers deliver and the
# handoff's 192 kHz, lengths from 0.1 s to 1 s.
PLAN = [
    (12_000.0, 1.0, "npy"),
    (192_000.0, 0.25, "npy"),
    (12_000.0, 0.1, "json"),
    (48_000.0, 0.5, "json"),
    (192_000.0, 1.0, "npy"),
    (24_000.0, 0.25, "json"),
]


def _say(text: str) -> None:
    print(text, flush=True)


HEALTH_PROBE_S = 5.0
"""How long the demo waits for ``/health`` before taking the address for one no shim answers
at: an idle shim answers in milliseconds, one whose registry does not answer within ~3 s; a
process holding the port without answering HTTP cost 10 s a probe before."""


def _health(client: ShimClient) -> dict | None:
    """The shim's ``/health`` with its checks, ``{"status": "starting"}`` from a shim waiting
    for its stores; None while nothing answers at its address.

    Raises:
        ShimError: something else answers there, or the shim shows its checks to a caller
            with a key only and the demo has none.
    """
    try:
        status, body = client.health(timeout_s=HEALTH_PROBE_S)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None
    if isinstance(body, dict) and isinstance(body.get("checks"), dict):
        return body
    if starting_answer(body):
        return {"status": "starting"}
    where = f"{client.base_url} (GET /health)"
    if isinstance(body, dict) and list(body) == ["status"]:  # what a caller without a key sees
        raise ShimError(
            status,
            body,
            where,
            "its checks",
            "it shows them to a caller with a key: set HEIMDALL_API_KEY to one of its keys",
        )
    raise ShimError(status, body, where, "the shim's health")


@functools.cache
def _log_folder() -> Path:
    """A folder of this run's own for the logs of what it starts (made private by mkdtemp): a
    fixed name in the shared temporary folder failed where another user's run had left its log
    there, and would have followed a link planted in its place."""
    return Path(tempfile.mkdtemp(prefix="heimdall-demo-"))


@contextmanager
def _started(args: list[str], name: str) -> Iterator[subprocess.Popen]:
    log_path = _log_folder() / f"{args[0]}.log"
    _say(f"starting {name}: heimdall-inference {' '.join(args)} (log: {log_path})")
    with cli_process(args, log_path) as process:
        yield process
        _say(f"stopping {name}")


def running_service(settings: Settings, stack: ExitStack) -> ShimClient:
    """A client of the shim, starting the shim and a worker (stopped when ``stack`` closes)
    when none run."""
    bootstrap.require_services(settings)
    bootstrap.migrate_database(settings)
    client = ShimClient(
        base_url(settings.api_host, settings.api_port),
        timeout_s=10,
        api_key=os.environ.get("HEIMDALL_API_KEY") or a_key(settings),
    )

    def serving() -> bool:
        return "checks" in (_health(client) or {})

    health = _health(client)
    if health is None:
        api_process = stack.enter_context(_started(["api", "--workers", "1"], "the HTTP shim"))
        wait_until(
            "the HTTP shim",  # a shim that exited is not probed again (a probe may wait)
            lambda: api_process.poll() is None and serving(),
            30,
            api_process,
        )
    elif "checks" not in health:
        _say(f"waiting for the HTTP shim starting at {client.base_url}")
        wait_until("the HTTP shim", serving, 90)
    else:
        _say(f"using the HTTP shim already running at {client.base_url}")

    def worker_ready() -> bool:  # serving, if from its host's copies while the registry is down
        body = _health(client) or {}
        return bool("checks" in body and body["checks"]["model"]["workers"])

    if not worker_ready():
        worker = stack.enter_context(_started(["worker", "--concurrency", "1"], "a worker"))
        wait_until("the worker", worker_ready, 60, worker)
    else:
        _say("using the worker(s) already serving the queue")
    return client


def run_demo(settings: Settings, *, captures: int = 6, seed: int | None = None) -> int:
    with ExitStack() as stack:
        client = running_service(settings, stack)
        return _locate_captures(client, captures, seed, settings.model_dir)


def reference_figures(model_dir: Path) -> str:
    """The configured model's held-out evaluation, to compare the demo's errors with."""
    try:
        rows = load_metadata(model_dir, verify=False).metrics["evaluation"]["rows"]
    except (ModelError, KeyError):
        return "the model carries no evaluation figures"
    overall = rows["all"]["model"]
    return (
        f"held-out evaluation of the model: median {overall['median_km']:.1f} km, "
        f"90th percentile {overall['p90_km']:.1f} km (docs/evaluation)"
    )


def _locate_captures(client: ShimClient, captures: int, seed: int | None, model_dir: Path) -> int:
    if seed is None:
        seed = int(time.time() * 1000) % 1_000_000
    _say(f"simulating {captures} captures with seed {seed} (--seed {seed} repeats them)")
    simulator = CaptureSimulator()
    rng = np.random.default_rng(seed)
    submitted = []
    for index in range(captures):
        rate, duration, form = PLAN[index % len(PLAN)]
        capture = simulator.simulate(rng, sample_rate_hz=rate, duration_s=duration)
        fields = {
            "sample_rate_hz": capture.sample_rate_hz,
            "frequency_mhz": capture.frequency_mhz,
            "receivers": list(capture.receivers),
        }
        started = time.perf_counter()
        if form == "npy":
            accepted = client.submit_npy(capture.iq, **fields)  # type: ignore[arg-type]
        else:
            accepted = client.submit_json(ShimClient.json_document(capture.iq, **fields))  # type: ignore[arg-type]
        submit_ms = (time.perf_counter() - started) * 1e3
        submitted.append(
            (accepted["job_id"], capture, f"{rate / 1e3:g} kHz {duration:g} s {form}", submit_ms)
        )

    # Resubmit the first capture unchanged: a duplicate is answered from the result cache.
    first = submitted[0][1]
    duplicate = client.submit_npy(
        first.iq,
        sample_rate_hz=first.sample_rate_hz,
        frequency_mhz=first.frequency_mhz,
        receivers=list(first.receivers),
    )

    _say("")
    _say(
        f"{'capture':<22} {'submit':>7} {'status':<9} {'estimate (lat, lon)':<21} "
        f"{'error':>8} {'68% ellipse (a x b)':>20} {'95%':>5} {'cache':>5} {'total':>8}  domain"
    )
    failures = 0
    repeat_hit = False
    errors_km: list[float] = []
    rows = [*submitted, (duplicate["job_id"], first, "same as first (repeat)", float("nan"))]
    for job_id, capture, label, submit_ms in rows:
        try:
            view = client.wait(job_id, timeout_s=60)
        except (TimeoutError, ShimError) as exc:
            _say(f"{label:<22} {'':>7} error: {exc}")
            failures += 1
            continue
        if view["status"] != "succeeded":
            _say(f"{label:<22} {'':>7} {view['status']:<9} {view['error']}")
            failures += 1
            continue
        result = view["result"]
        error_km = distance_m(result["lat"], result["lon"], capture.lat, capture.lon) / 1e3
        if job_id != duplicate["job_id"]:
            errors_km.append(error_km)
        e68 = result["ellipses"]["68"]
        inside = "in" if inside_drawn_ellipse(result, capture.lat, capture.lon, "95") else "out"
        end_to_end = view["timings"].get("end_to_end_ms", float("nan"))
        repeat_hit = bool(view["cache_hit"]) if job_id == duplicate["job_id"] else repeat_hit
        submit_text = "-" if submit_ms != submit_ms else f"{submit_ms:.1f}ms"
        _say(
            f"{label:<22} {submit_text:>7} {view['status']:<9} "
            f"{result['lat']:9.5f}, {result['lon']:9.5f} {error_km:6.1f}km "
            f"{e68['semi_major_m'] / 1e3:7.1f} x {e68['semi_minor_m'] / 1e3:5.1f} km "
            f"{inside:>5} {str(view['cache_hit']).lower():>5} {end_to_end:6.1f}ms  "
            f"{domain_text(result.get('quality'))}"
        )
    _say("")
    _say(
        "error: distance from the simulated true position; 95%: whether the truth lies inside "
        "the 95% ellipse; total: submission to result; domain: the result's quality block "
        "(in, or why not; a caution ends in ?)."
    )
    if errors_km:
        _say(
            f"median error of these captures: {float(np.median(errors_km)):.1f} km; "
            + reference_figures(model_dir)
        )
    if failures:
        _say(f"{failures} capture(s) did not succeed")
        return 1
    if not repeat_hit:
        _say("the repeated capture was not served from the result cache")
        return 1
    _say(f"all {len(rows)} captures located; the repeat was served from the result cache")
    return 0


def domain_text(quality: dict | None) -> str:
    """A result's quality block in a word: ``in``, ``-`` (the model records no domain), or the
    reasons' codes; cautions follow with a ``?`` (``in,outside_region?``)."""
    if not quality or quality.get("in_domain") is None and not quality.get("reasons"):
        return "-"
    words = ["in"] if quality.get("in_domain") else [r["code"] for r in quality.get("reasons", [])]
    words += [f"{c['code']}?" for c in quality.get("cautions", [])]
    return ",".join(words)
