"""Several inference jobs at once, from task messages to recorded results.

What one job costs in round trips (start statement, Redis fetch, ONNX run, result statement,
Redis pipeline) is paid once for the whole batch here; the maths per capture is unchanged. The
guarantees are those of :func:`~inference_worker.serving.jobs.run_job`: safe to run twice, one
recorded result per job, every statement conditional on the job not being final yet.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from inference_worker.serving.jobs import (
    JobOutcome,
    JobServices,
    fail_started,
    left_out,
    parse_message,
    queue_wait_ms,
    run_job,
)
from inference_worker.serving.locating import BadJob, capture_features, decode_blob, describe_output
from inference_worker.storage.views import job_view, with_json
from tasks.contract import LocateMessage, capture_fingerprint
from tasks.outbox import new_job

log = logging.getLogger(__name__)


def run_jobs(items: Sequence[tuple[object, str | None]], services: JobServices) -> list[JobOutcome]:
    """Turn several task messages (``(payload, task_id)`` each) into recorded results, in the
    order given.

    Model jobs on ``services.model`` share one start statement, one Redis fetch, one ONNX run,
    one result statement and one Redis pipeline. Anything else (an unreadable message, a TDoA
    job, a second copy of a job in the same batch) goes through :func:`run_job` on its own.

    Raises:
        One of :data:`~inference_worker.storage.errors.TRANSIENT_ERRORS` when a store is
        unreachable; the caller retries the whole batch (jobs already final are skipped).
    """
    started = time.perf_counter()
    outcomes: dict[int, JobOutcome] = {}
    batch: list[tuple[int, LocateMessage]] = []
    seen: set[str] = set()
    for index, (payload, task_id) in enumerate(items):
        try:
            message: LocateMessage | None = parse_message(payload)
        except BadJob:
            message = None
        if message is None or message.method != "model" or message.job_id in seen:
            outcomes[index] = run_job(payload, services, task_id)
        else:
            seen.add(message.job_id)
            batch.append((index, message))
    if batch:
        outcomes.update(_run_model_jobs(batch, services, started))
    done = [outcomes[index] for index in range(len(items))]
    counts = Counter(outcome.status for outcome in done)
    log.info(
        "batch of %d job%s: %s",
        len(done),
        "" if len(done) == 1 else "s",
        ", ".join(f"{count} {status}" for status, count in sorted(counts.items())),
    )
    return done


def _run_model_jobs(
    batch: list[tuple[int, LocateMessage]], services: JobServices, started: float
) -> dict[int, JobOutcome]:
    model, redis = services.model, services.redis
    version = model.version
    outcomes: dict[int, JobOutcome] = {}
    rows = services.jobs.start_many([new_job(message) for _, message in batch])
    live: list[tuple[int, LocateMessage]] = []
    for index, message in batch:
        if message.job_id not in rows:
            outcomes[index] = left_out(services, message)
        else:
            live.append((index, message))
    if not live:
        return outcomes

    use_cache = services.cache_ttl_s > 0
    digest = model.metadata.sha256
    cache_keys = [redis.cache_key(version, digest, capture_fingerprint(m)) for _, m in live]
    t0 = time.perf_counter()
    fetched = redis.fetch_captures([m.blob_key for _, m in live], cache_keys if use_cache else None)
    fetch_ms = (time.perf_counter() - t0) * 1e3

    # Per job: (index, message, cache key, cached result, (features, quality), stage timings).
    ready: list[tuple[int, LocateMessage, str, dict[str, Any] | None, Any, dict[str, float]]] = []
    for (index, message), key, (blob, cached) in zip(live, cache_keys, fetched, strict=True):
        try:
            iq = decode_blob(blob, message)
            t1 = time.perf_counter()
            features = None if cached is not None else capture_features(iq, message, model.metadata)
            timings = (
                {} if cached is not None else {"features_ms": (time.perf_counter() - t1) * 1e3}
            )
        except BadJob as exc:
            outcomes[index] = fail_started(services, message.job_id, str(exc), version)
            redis.delete_blob(message.blob_key)
            continue
        ready.append((index, message, key, cached, features, timings))

    # One ONNX run for every capture not answered from the result cache.
    to_run = [entry for entry in ready if entry[3] is None]
    outputs: dict[int, np.ndarray] = {}
    if to_run:
        t2 = time.perf_counter()
        predicted = model.predict(np.stack([entry[4][0] for entry in to_run]))
        share_ms = (time.perf_counter() - t2) * 1e3 / len(to_run)
        for entry, output in zip(to_run, predicted, strict=True):
            entry[5]["inference_ms"] = share_ms
            outputs[entry[0]] = output

    results: list[dict[str, Any]] = []
    answers: dict[str, tuple[int, LocateMessage, str, bool]] = {}
    now = time.perf_counter()
    for index, message, key, cached, computed, timings in ready:
        if cached is None:
            t3 = time.perf_counter()
            try:
                result = describe_output(outputs[index], model.metadata, computed[1])
            except BadJob as exc:
                outcomes[index] = fail_started(services, message.job_id, str(exc), version)
                redis.delete_blob(message.blob_key)
                continue
            timings["ellipse_ms"] = (time.perf_counter() - t3) * 1e3
        else:
            result = cached
        timings = {
            "queue_wait_ms": queue_wait_ms(rows[message.job_id]),
            "fetch_ms": fetch_ms,
            **timings,
            "worker_total_ms": (now - started) * 1e3,
            "batch_size": float(len(batch)),
        }
        results.append(
            {
                "job_id": message.job_id,
                "result_json": orjson.dumps(result).decode(),
                "model_version": version,
                "model_version_id": services.model_version_id,
                "cache_hit": cached is not None,
                "timings": {k: round(v, 3) for k, v in timings.items()},
            }
        )
        answers[message.job_id] = (index, message, key, cached is not None)

    finals = services.jobs.succeed_many(results)
    finished = []
    for recorded in results:
        index, message, key, cache_hit = answers[recorded["job_id"]]
        final = finals.get(message.job_id)
        if final is None:
            log.info("job %s finished elsewhere first; result not recorded", message.job_id)
            outcomes[index] = JobOutcome(message.job_id, "duplicate")
            continue
        encoded = recorded["result_json"]
        row = {**final, "result": None, "timings": recorded["timings"]}
        view = with_json(job_view(row), "result", encoded)
        cache = None if cache_hit or not use_cache else (key, encoded, services.cache_ttl_s)
        finished.append((message.blob_key, (message.job_id, view, services.result_ttl_s), cache))
        outcomes[index] = JobOutcome(
            message.job_id,
            "succeeded",
            cache_hit=cache_hit,
            model_version=version,
            timings=recorded["timings"],
        )
    if finished:
        redis.finish_many(finished)
    return outcomes
