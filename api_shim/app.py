"""The HTTP shim (Flask app factory): submit captures, poll jobs, report health.

It never runs the model: it validates, records the job, stores the IQ and publishes the task.
Errors are JSON ``{"error": {"code": ..., "message": ...}}`` with a 4xx for the client's
mistakes and a 503 when a service it needs is down.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Flask, Response, jsonify, request, url_for
from werkzeug.exceptions import HTTPException

from api_shim.submission import JobConflict, ServiceUnavailable, Submitter, describe_accepted
from inference_worker.capture import (
    CaptureError,
    CaptureLimits,
    CaptureTooLarge,
    decode_json_iq,
    decode_npy,
    parse_job_id,
    parse_meta,
    validate_iq,
)
from inference_worker.jobs import TRANSIENT_ERRORS, job_view
from inference_worker.model import ModelError, load_metadata
from inference_worker.reachability import probe_broker
from inference_worker.settings import Settings, load_settings
from inference_worker.storage.database import JobStore, create_engine
from inference_worker.storage.redis_store import RedisStore, connect
from tasks.app import create_celery
from tasks.contract import TASK_NAME, LocateMessage

log = logging.getLogger(__name__)

NPY_TYPES = ("application/x-npy", "application/octet-stream")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str) -> tuple[Response, int]:
    return jsonify({"error": {"code": code, "message": message}}), status


def create_app(settings: Settings | None = None) -> Flask:
    """Build the shim. Connections are opened lazily, on the first request that needs them."""
    settings = settings or load_settings()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]

    metadata = load_metadata(settings.model_dir, verify=False)
    limits = CaptureLimits(
        min_samples=metadata.features.min_samples,
        max_samples=settings.max_samples_per_receiver,
        min_sample_rate_hz=max(settings.min_sample_rate_hz, metadata.features.bandwidth_hz),
        max_sample_rate_hz=settings.max_sample_rate_hz,
    )
    celery = create_celery(settings.broker_url, settings.queue)
    jobs = JobStore(create_engine(settings.database_url, settings.database_schema))
    store = RedisStore(connect(settings.redis_url), settings.redis_prefix)

    def publish(message: LocateMessage) -> None:
        celery.send_task(
            TASK_NAME,
            args=[message.model_dump(mode="json")],
            task_id=message.job_id,
            queue=settings.queue,
        )

    submitter = Submitter(jobs, store, publish, settings.blob_ttl_s)
    app.extensions["heimdall"] = {
        "settings": settings,
        "jobs": jobs,
        "store": store,
        "celery": celery,
    }

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> tuple[Response, int]:
        return error_response(exc.status, exc.code, exc.message)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> tuple[Response, int]:
        code = (exc.name or "error").lower().replace(" ", "_")
        message = exc.description or exc.name
        if exc.code == 413:
            message = f"request body larger than {settings.max_body_bytes} bytes"
        return error_response(exc.code or 500, code, message)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> tuple[Response, int]:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal error; the event was logged")

    def accept(iq: Any, fields: dict[str, Any]) -> tuple[Response, int]:
        try:
            job_id = parse_job_id(fields.get("job_id"))
            meta = parse_meta(fields, limits, metadata.receiver_ids)
            iq = validate_iq(iq, limits)
        except CaptureTooLarge as exc:
            raise ApiError(413, "capture_too_large", str(exc)) from None
        except CaptureError as exc:
            raise ApiError(422, "invalid_capture", str(exc)) from None
        try:
            accepted = submitter.submit(iq, meta, job_id)
        except JobConflict as exc:
            raise ApiError(409, "job_id_conflict", str(exc)) from None
        except ServiceUnavailable as exc:
            raise ApiError(503, "service_unavailable", str(exc)) from None
        status_url = url_for("get_job", job_id=accepted.job_id)
        response = jsonify(describe_accepted(accepted, status_url))
        response.headers["Location"] = status_url
        return response, 202

    @app.post("/predict")
    def predict() -> tuple[Response, int]:
        content_type = (request.mimetype or "").lower()
        if content_type == "application/json":
            body = request.get_json(silent=True)
            if not isinstance(body, dict):
                raise ApiError(400, "invalid_json", "body must be a JSON object")
            if "iq_data" not in body:
                raise ApiError(422, "invalid_capture", "iq_data is required")
            try:
                iq = decode_json_iq(body["iq_data"])
            except CaptureError as exc:
                raise ApiError(422, "invalid_capture", str(exc)) from None
            return accept(iq, body)
        if content_type in NPY_TYPES:
            try:
                iq = decode_npy(request.get_data(cache=False))
            except CaptureError as exc:
                raise ApiError(400, "invalid_npy", str(exc)) from None
            return accept(iq, request.args.to_dict())
        raise ApiError(
            415,
            "unsupported_media_type",
            "send application/json, or application/x-npy with metadata in the query string",
        )

    @app.get("/jobs/<job_id>")
    def get_job(job_id: str) -> tuple[Response, int]:
        try:
            cached = store.get_result(job_id)
        except TRANSIENT_ERRORS:
            cached = None  # Redis is a cache here; PostgreSQL is the record of truth
        if cached is not None:
            return jsonify(cached), 200
        try:
            row = jobs.get(job_id)
        except TRANSIENT_ERRORS:
            raise ApiError(503, "service_unavailable", "the job database is unavailable") from None
        if row is None:
            raise ApiError(404, "job_not_found", f"no job with id {job_id!r}")
        return jsonify(job_view(row)), 200

    @app.get("/health")
    def health() -> tuple[Response, int]:
        checks = {
            "broker": _check(lambda: probe_broker(settings.broker_url)),
            "redis": _check(store.ping),
            "database": _check(jobs.ping),
        }
        model = _model_check(settings, store)
        stores_ok = all(c["ok"] for c in checks.values())
        status = "ok" if stores_ok and model["ok"] else ("degraded" if stores_ok else "unavailable")
        body = {"status": status, "checks": {**checks, "model": model}}
        return jsonify(body), 200 if stores_ok else 503

    return app


def _check(probe: Any) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        probe()
    except Exception as exc:  # a health check reports any failure, whatever its type
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1e3, 2)}


def _model_check(settings: Settings, store: RedisStore) -> dict[str, Any]:
    """The configured model is intact and at least one worker on this queue has it loaded."""
    try:
        metadata = load_metadata(settings.model_dir, verify=True)
    except ModelError as exc:
        return {"ok": False, "error": str(exc), "workers": []}
    try:
        workers = [w for w in store.workers() if w.get("queue") == settings.queue]
    except TRANSIENT_ERRORS as exc:
        return {"ok": False, "error": f"cannot read worker heartbeats: {exc}", "workers": []}
    body: dict[str, Any] = {
        "ok": bool(workers),
        "configured_version": metadata.version,
        "workers": workers,
    }
    if not workers:
        body["error"] = "no worker is serving this queue"
    return body
