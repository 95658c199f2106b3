"""The public JSON of a job, built from its PostgreSQL row."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def job_view(row: Mapping[Any, Any]) -> dict[str, Any]:
    """The public JSON of a job, as ``GET /jobs/<id>`` answers it and Redis caches it."""
    view: dict[str, Any] = {
        "job_id": row["job_id"],
        "status": row["status"],
        "created_at": _iso(row["created_at"]),
        "started_at": _iso(row["started_at"]),
        "finished_at": _iso(row["finished_at"]),
        "capture_time": _iso(row["capture_time"]),
        "frequency_mhz": row["frequency_mhz"],
        "sample_rate_hz": row["sample_rate_hz"],
        "n_samples": row["n_samples"],
        "receivers": list(row["receivers"]),
        "attempts": row["attempts"],
        "model_version": row["model_version"],
        "cache_hit": row["cache_hit"],
        "result": row["result"],
        "error": row["error"],
        "timings": row["timings"],
        "batch_id": row["batch_id"],
        "tenant": row["tenant"],
    }
    if row["finished_at"] is not None and row["created_at"] is not None:
        elapsed = (row["finished_at"] - row["created_at"]).total_seconds() * 1000.0
        view["timings"] = {**(row["timings"] or {}), "end_to_end_ms": round(elapsed, 3)}
    return view


def with_json(document: dict[str, Any], key: str, encoded: str) -> str:
    """``document`` as JSON with ``key`` set to the already encoded JSON ``encoded``: a result
    written to several places is encoded once."""
    rest = orjson.dumps({k: v for k, v in document.items() if k != key}).decode()
    return f'{rest[:-1]},"{key}":{encoded}}}' if len(rest) > 2 else f'{{"{key}":{encoded}}}'
