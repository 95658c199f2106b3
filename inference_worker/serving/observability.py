"""Prometheus metrics of the worker and the shim, recorded from hooks, not from task bodies.

Both run several processes (Celery prefork children, gunicorn workers), so metrics use
prometheus_client's multiprocess mode: each process writes its samples under
``PROMETHEUS_MULTIPROC_DIR`` and one collector sums them when scraped. The worker's main
process serves them on ``HEIMDALL_WORKER_METRICS_PORT``; the shim serves its own at ``/metrics``.
:func:`prepare_multiprocess_dir` must run before prometheus_client is first imported.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


METRICS_DIR_PREFIX = "heimdall-metrics-"


def prepare_multiprocess_dir(name: str) -> Path:
    """Point prometheus_client at a fresh directory of this service process's own (before it
    is imported), removed when the process exits.

    It lies in ``PROMETHEUS_MULTIPROC_DIR`` where that is set (a volume for metrics, say), else
    in the temporary folder, named ``heimdall-metrics-NAME-PID``: nothing else in a configured
    folder is touched (it was emptied before, and a worker and an api given the same one wiped
    each other's samples and then reported them summed), and folders left by processes that
    were killed (no exit to remove them) are removed by the next service to start there. A
    process that executes itself again (Celery's worker on SIGHUP, the shim's master on SIGUSR2)
    finds its own folder in the variable: it starts beside it, not inside it (inside, the former
    master's exit removed the new one's samples with its own).
    """
    parent = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.gettempdir())
    if parent.name.startswith(METRICS_DIR_PREFIX):
        parent = parent.parent
    _remove_dead_dirs(parent)
    path = parent / f"{METRICS_DIR_PREFIX}{name}-{os.getpid()}"
    if path.exists():  # a pid used again
        shutil.rmtree(path)
    path.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)  # the service's processes inherit it
    owner = os.getpid()

    def remove() -> None:
        if os.getpid() == owner:  # not in a forked process (gunicorn's workers exit too)
            shutil.rmtree(path, ignore_errors=True)

    atexit.register(remove)
    return path


def _remove_dead_dirs(parent: Path) -> None:
    """Remove the metrics folders under ``parent`` of service processes no longer running."""
    for folder in parent.glob(f"{METRICS_DIR_PREFIX}*-*"):
        pid = folder.name.rsplit("-", 1)[1]
        if folder.is_dir() and pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _metrics() -> dict[str, Any]:
    """The metric objects, created on first use (after the multiprocess directory is set)."""
    global _METRICS
    if _METRICS is not None:
        return _METRICS
    with _METRICS_LOCK:  # the shim's threads may all meet their first request at once
        if _METRICS is None:
            _METRICS = _create_metrics()
    return _METRICS


def _create_metrics() -> dict[str, Any]:
    from prometheus_client import Counter, Histogram

    return {
        "jobs": Counter(
            "heimdall_jobs_total",
            "Jobs finished by the worker.",
            ["outcome", "model_version", "method"],
        ),
        "cache": Counter(
            "heimdall_cache_lookups_total", "Result cache lookups by the worker.", ["result"]
        ),
        "queue_wait": Histogram(
            "heimdall_queue_wait_seconds",
            "Time from submission to a worker taking the job.",
            buckets=LATENCY_BUCKETS,
        ),
        "features": Histogram(
            "heimdall_feature_seconds", "Feature extraction time.", buckets=LATENCY_BUCKETS
        ),
        "inference": Histogram(
            "heimdall_inference_seconds",
            "ONNX inference time.",
            ["model_version"],
            buckets=LATENCY_BUCKETS,
        ),
        "end_to_end": Histogram(
            "heimdall_end_to_end_seconds",
            "Time from submission to the recorded result.",
            ["outcome", "method"],
            buckets=LATENCY_BUCKETS,
        ),
        "tdoa": Histogram(
            "heimdall_tdoa_seconds",
            "Time to read a TDoA job's recordings, find the time differences and locate.",
            buckets=LATENCY_BUCKETS,
        ),
        "tdoa_fits": Counter(
            "heimdall_tdoa_fits_total",
            "TDoA jobs located, by how their delays fitted: plausible, left_out (one "
            "receiver's disagreed and was left out), widened (they agreed with no one "
            "position; their uncertainties were widened to fit) or unheard (plausible once "
            "receivers that heard no signal in common were left out).",
            ["fit"],
        ),
        "store_retries": Counter(
            "heimdall_store_retries_total",
            "Store calls a worker process waited out and tried again (the store down or "
            "refusing work for a while).",
            ["store"],
        ),
        "submission": Histogram(
            "heimdall_submission_seconds",
            "Time the shim takes to accept (or refuse) a submission (one that waits for its "
            "result with ?wait= counts until it was accepted, as 202).",
            ["endpoint", "status"],
            buckets=LATENCY_BUCKETS,
        ),
        "waits_declined": Counter(
            "heimdall_api_waits_declined_total",
            "Waits for jobs (?wait=) a shim process answered at once because it held as many as "
            "it may (HEIMDALL_API_MAX_WAITS): clients then ask again after Retry-After.",
        ),
        "batch_captures": Counter(
            "heimdall_batch_captures_total",
            "Captures of POST /predict-batch by the status each would have had alone (a batch "
            "that accepted some answers 202 while later captures meet an outage: 503).",
            ["status"],
        ),
    }


_METRICS: dict[str, Any] | None = None
_METRICS_LOCK = threading.Lock()


def record_job(outcome: dict[str, Any]) -> None:
    """Record a finished job from the dict the task returns (see ``JobOutcome.to_json``)."""
    metrics = _metrics()
    status = outcome.get("status", "unknown")
    version = outcome.get("model_version") or "none"
    method = outcome.get("method") or "model"
    metrics["jobs"].labels(status, version, method).inc()
    if status in ("duplicate", "reused_id"):
        return
    timings = outcome.get("timings") or {}
    if status == "succeeded" and method == "model":
        metrics["cache"].labels("hit" if outcome.get("cache_hit") else "miss").inc()
    if "queue_wait_ms" in timings:
        metrics["queue_wait"].observe(timings["queue_wait_ms"] / 1e3)
    if "features_ms" in timings:
        metrics["features"].observe(timings["features_ms"] / 1e3)
    if "inference_ms" in timings:
        metrics["inference"].labels(version).observe(timings["inference_ms"] / 1e3)
    if "queue_wait_ms" in timings and "worker_total_ms" in timings:
        total = (timings["queue_wait_ms"] + timings["worker_total_ms"]) / 1e3
        metrics["end_to_end"].labels(status, method).observe(total)
    if "tdoa_ms" in timings:
        metrics["tdoa"].observe(timings["tdoa_ms"] / 1e3)
    if status == "succeeded" and outcome.get("tdoa_fit"):
        metrics["tdoa_fits"].labels(outcome["tdoa_fit"]).inc()


def record_store_retry(store: str) -> None:
    """A worker is about to try a store call again (``store``: ``redis``, ``postgresql``, or
    ``registry`` when a job asked for a version and the model registry did not answer)."""
    _metrics()["store_retries"].labels(store).inc()


def record_submission(endpoint: str, status: int, seconds: float) -> None:
    _metrics()["submission"].labels(endpoint, str(status)).observe(seconds)


def record_wait_declined() -> None:
    _metrics()["waits_declined"].inc()


def record_batch_captures(statuses: Iterable[int]) -> None:
    """Count a batch's captures by the status each would have had alone (202 when accepted)."""
    counter = _metrics()["batch_captures"]
    for status, count in collections.Counter(statuses).items():
        counter.labels(str(status)).inc(count)


def connect_worker_signals() -> None:
    """Record every finished task from Celery's ``task_postrun`` hook."""
    from celery.signals import task_postrun

    def on_postrun(retval: Any = None, state: str | None = None, **_: Any) -> None:
        if isinstance(retval, dict):
            record_job(retval)
        elif state == "FAILURE":
            _metrics()["jobs"].labels("error", "none", "unknown").inc()

    task_postrun.connect(on_postrun, weak=False)


def start_worker_exporter(port: int) -> None:
    """Serve the summed metrics of all worker processes from the main process."""
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    start_http_server(port, addr="0.0.0.0", registry=registry)
    log.info("worker metrics on :%d/metrics", port)


def mark_process_dead(pid: int) -> None:
    """Forget a finished process's live gauges (called when a pool child exits)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def render(extra_collectors: tuple[Any, ...] = ()) -> tuple[bytes, str]:
    """The exposition text of this service's metrics (all its processes) and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

    _metrics()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    for collector in extra_collectors:
        registry.register(collector)
    try:
        return generate_latest(registry), CONTENT_TYPE_LATEST
    finally:
        for collector in extra_collectors:
            registry.unregister(collector)
