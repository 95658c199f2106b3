"""Answering a submission from the result cache: a capture the serving model has located already
is recorded as succeeded at once, without a trip through the queue and a worker."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from inference_worker.storage.errors import STORE_ERRORS
from inference_worker.storage.redis_store import RedisStore
from inference_worker.storage.views import job_view, with_json
from tasks.contract import LocateMessage, capture_fingerprint, challenger_share
from tasks.served import ServedModelCache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CachedAnswer:
    """The serving model's result for a capture it has located already."""

    model_version: str
    result_json: str
    """As the cache holds it: written into the job's row and view without decoding."""
    timings: dict[str, float]


def cached_answer(
    store: RedisStore, served: ServedModelCache, message: LocateMessage, cache_ttl_s: int
) -> CachedAnswer | None:
    """The serving model's cached result for this capture, if the job is the champion's and
    the capture was located already (one Redis round trip); ``None`` otherwise.

    Raises:
        Any error of Redis's (:data:`STORE_ERRORS`): a Redis that cannot be read cannot take
            the capture either, so the submission is refused before its row is written.
    """
    summary = served.current()
    if summary is None or message.model or message.method != "model" or cache_ttl_s <= 0:
        return None
    started = time.perf_counter()
    key = store.cache_key(summary.version, summary.sha256, capture_fingerprint(message))
    fraction, cached = store.cached_answer(key)
    if cached is None or challenger_share(message.job_id) < fraction:
        return None  # not seen, or this job goes to the challenger
    lookup_ms = round((time.perf_counter() - started) * 1e3, 3)
    return CachedAnswer(summary.version, cached, {"answered_at_submission_ms": lookup_ms})


def announce_answered(
    store: RedisStore, row: Mapping[str, Any], answer: CachedAnswer, result_ttl_s: int
) -> None:
    """Cache the view of a job answered at submission (its row as the job store wrote it), and
    announce it final; PostgreSQL holds the record if Redis does not answer."""
    view = job_view({**row, "result": None, "timings": answer.timings})
    try:
        store.put_result(row["job_id"], with_json(view, "result", answer.result_json), result_ttl_s)
    except STORE_ERRORS as exc:
        log.warning("job %s answered from the cache, not cached itself: %s", row["job_id"], exc)
