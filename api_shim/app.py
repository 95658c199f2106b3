"""The HTTP shim (Flask app factory): submit captures, poll jobs, report health.

It never runs the model: it validates, records the job, stores the IQ and publishes the task.
Errors are JSON ``{"error": {"code": ..., "message": ...}}`` with a 4xx for the client's
mistakes and a 503 when a service it needs is down.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from pathlib import Path
from typing import Any

import amqp.exceptions
import kombu
import numpy as np
from flask import Flask, Response, g, jsonify, request, url_for
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from prometheus_client.core import GaugeMetricFamily
from werkzeug.exceptions import HTTPException

from api_shim.auth import Access, Denied, KeyRing, Principal
from api_shim.submission import (
    Accepted,
    JobConflict,
    ServiceUnavailable,
    Submitter,
    describe_accepted,
)
from inference_worker import observability
from inference_worker.capture import (
    JOB_ID_PATTERN,
    CaptureError,
    CaptureLimits,
    CaptureTooLarge,
    decode_json_iq,
    decode_npy,
    parse_job_id,
    parse_meta,
    validate_iq,
)
from inference_worker.ellipse import feature_collection
from inference_worker.jobs import TRANSIENT_ERRORS, job_view
from inference_worker.model import ModelError, load_metadata
from inference_worker.reachability import probe_broker, redact_secrets
from inference_worker.registry import RegistryError, open_registry, serving_model_dir
from inference_worker.serving import reload_plan
from inference_worker.settings import Settings, load_settings
from inference_worker.storage.database import JobStore, create_engine
from inference_worker.storage.redis_store import RedisStore, connect
from tasks.app import create_celery, dead_letter_queue_name
from tasks.contract import TASK_NAME, LocateMessage

log = logging.getLogger(__name__)

NPY_TYPES = ("application/x-npy", "application/octet-stream")
OPENAPI_FILE = Path(__file__).resolve().parent / "openapi.json"


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

    model_dir = serving_model_dir(settings)
    metadata = load_metadata(model_dir, verify=False)
    limits = CaptureLimits(
        min_samples=metadata.features.min_samples,
        max_samples=settings.max_samples_per_receiver,
        min_sample_rate_hz=max(settings.min_sample_rate_hz, metadata.features.bandwidth_hz),
        max_sample_rate_hz=settings.max_sample_rate_hz,
    )
    celery = create_celery(
        settings.broker_url, settings.queue, delivery_limit=settings.max_deliveries
    )
    jobs = JobStore(
        create_engine(settings.database_url, settings.database_schema, role="heimdall-api")
    )
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

    keyring = KeyRing(settings)
    if not keyring.keys_required:
        log.warning("no API keys configured (HEIMDALL_API_KEYS): submitting and polling are open")

    @app.before_request
    def _start_timer() -> None:
        g.started = time.perf_counter()

    @app.before_request
    def _authenticate() -> None:
        """Who is asking (their key), and whether their role allows this endpoint."""
        principal = keyring.identify(
            request.headers.get("Authorization"), request.headers.get("X-API-Key")
        )
        access = ENDPOINT_ACCESS.get(request.endpoint, "client") if request.endpoint else "open"
        keyring.authorize(principal, access)
        g.principal = principal

    def rate_limited_key() -> str:
        principal: Principal | None = g.get("principal")
        return f"key:{principal.name}" if principal else f"addr:{get_remote_address()}"

    limiter = Limiter(
        key_func=rate_limited_key,
        application_limits=[lambda: g.principal.rate_limit],
        application_limits_exempt_when=lambda: g.get("principal") is None,
        storage_uri=settings.redis_url,
        key_prefix=f"{settings.redis_prefix}ratelimit",
        strategy="fixed-window",
        headers_enabled=True,
        swallow_errors=True,  # Redis down: requests go on (the stores answer 503 themselves)
        in_memory_fallback_enabled=True,
    )
    limiter.init_app(app)

    def principal_tenant() -> str | None:
        principal: Principal | None = g.get("principal")
        return principal.tenant if principal else None

    def readable(tenant: str | None) -> bool:
        principal: Principal | None = g.get("principal")
        return principal is None or principal.may_read(tenant)

    @app.after_request
    def _record_submission(response: Response) -> Response:
        if request.endpoint in ("predict", "predict_batch") and "started" in g:
            elapsed = time.perf_counter() - g.started
            observability.record_submission(request.endpoint, response.status_code, elapsed)
        return response

    @app.post("/model/reload")
    def reload_model() -> tuple[Response, int]:
        body = request.get_json(silent=True) if request.data else {}
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_json", "body must be a JSON object (or empty)")
        fraction = body.get("challenger_fraction")
        if fraction is not None and (
            isinstance(fraction, bool)
            or not isinstance(fraction, int | float)
            or not 0 <= fraction <= 1
        ):
            raise ApiError(
                422, "invalid_fraction", "challenger_fraction must be a number in [0, 1]"
            )
        try:
            plan = reload_plan(settings)
        except (ModelError, RegistryError) as exc:
            raise ApiError(
                409, "model_refused", f"reload refused, workers keep their models: {exc}"
            ) from None
        if settings.model_source == "registry":
            try:
                versions = [v.to_json() for v in open_registry(settings).versions()]
                jobs.sync_registry(settings.model_name, versions)
            except TRANSIENT_ERRORS:
                raise ApiError(
                    503, "service_unavailable", "the job database is unavailable"
                ) from None
        try:
            generation = store.request_reload(None if fraction is None else float(fraction))
            _, current_fraction = store.serving_state()
        except TRANSIENT_ERRORS:
            raise ApiError(503, "service_unavailable", "Redis is unavailable") from None
        return jsonify(
            {"generation": generation, "challenger_fraction": current_fraction, **plan}
        ), 202

    def registry_for_changes() -> Any:
        if settings.model_source != "registry":
            raise ApiError(
                409,
                "no_registry",
                "this service serves a model folder; registry changes need "
                "HEIMDALL_MODEL_SOURCE=registry",
            )
        return open_registry(settings)

    def mirror_registry(registry: Any) -> None:
        try:
            jobs.sync_registry(settings.model_name, [v.to_json() for v in registry.versions()])
        except TRANSIENT_ERRORS:
            log.warning("model_versions not mirrored now (database unavailable); next reload will")

    @app.put("/models/aliases/<alias>")
    def set_alias(alias: str) -> tuple[Response, int]:
        if not MODEL_REF_PATTERN.match(alias) or alias.isdigit():
            raise ApiError(
                422, "invalid_alias", "an alias is 1-64 of A-Z a-z 0-9 . _ - (not a number)"
            )
        body = request.get_json(silent=True)
        version = body.get("version") if isinstance(body, dict) else None
        if isinstance(version, int) and not isinstance(version, bool):
            version = str(version)
        if not isinstance(version, str) or not version.isdigit():
            raise ApiError(422, "invalid_version", 'send {"version": "<registry version number>"}')
        registry = registry_for_changes()
        try:
            registry.set_alias(alias, version)
        except RegistryError as exc:
            raise ApiError(404, "unknown_version", str(exc)) from None
        mirror_registry(registry)
        log.info("alias %s -> version %s (key %s)", alias, version, g.principal.name)
        return jsonify({"alias": alias, "version": version, "aliases": registry.aliases()}), 200

    @app.delete("/models/aliases/<alias>")
    def remove_alias(alias: str) -> tuple[Response, int]:
        registry = registry_for_changes()
        if alias == settings.model_alias:
            raise ApiError(
                409, "alias_in_use", f"{alias!r} is the alias the workers serve; move it instead"
            )
        try:
            registry.remove_alias(alias)
        except RegistryError as exc:
            raise ApiError(404, "unknown_alias", str(exc)) from None
        mirror_registry(registry)
        log.info("alias %s removed (key %s)", alias, g.principal.name)
        return jsonify({"alias": alias, "aliases": registry.aliases()}), 200

    @app.get("/models")
    def models() -> tuple[Response, int]:
        generation, fraction = store.serving_state()
        body: dict[str, Any] = {
            "source": settings.model_source,
            "name": settings.model_name if settings.model_source == "registry" else metadata.name,
            "generation": generation,
            "challenger_fraction": fraction,
        }
        if settings.model_source == "registry":
            registry = open_registry(settings)
            body["aliases"] = registry.aliases()
            body["versions"] = [v.to_json() for v in registry.versions()]
        else:
            body["aliases"] = {"champion": metadata.version}
            body["versions"] = [{"model_version": metadata.version, "sha256": metadata.sha256}]
        body["workers"] = [_worker_models(w) for w in serving_workers(settings, store)]
        return jsonify(body), 200

    @app.get("/model/info")
    def model_info() -> tuple[Response, int]:
        info_dir = serving_model_dir(settings)
        meta = load_metadata(info_dir, verify=False)
        raw = json.loads((info_dir / "model.json").read_text())
        return jsonify(
            {
                "name": meta.name,
                "version": meta.version,
                "architecture": meta.architecture,
                "sha256": meta.sha256,
                "input": raw.get(
                    "input",
                    {"shape": ["batch", *[3, meta.features.n_mels, meta.features.n_frames]]},
                ),
                "outputs": raw["outputs"],
                "receivers": [r.__dict__ for r in meta.receivers],
                "features": meta.features.to_metadata(),
                "metrics": meta.metrics,
                "training": raw.get("training", {}),
            }
        ), 200

    @app.get("/health/model")
    def health_model() -> tuple[Response, int]:
        generation, _ = store.serving_state()
        workers = serving_workers(settings, store)
        problems = [
            f"{w['worker_id']}: {w.get('last_error') or 'generation ' + str(w.get('generation'))}"
            for w in workers
            if w.get("last_error") or w.get("generation") != generation
        ]
        ok = bool(workers) and not problems
        body = {
            "ok": ok,
            "generation": generation,
            "workers": [_worker_models(w) for w in workers],
            "problems": problems if workers else ["no worker is serving this queue"],
        }
        return jsonify(body), 200 if ok else 503

    @app.get("/openapi.json")
    def openapi() -> Response:
        return Response(OPENAPI_FILE.read_bytes(), mimetype="application/json")

    @app.get("/metrics")
    def metrics() -> Response:
        body, content_type = observability.render(
            (QueueDepth(settings.broker_url, settings.queue),)
        )
        return Response(body, content_type=content_type)

    @app.errorhandler(ApiError)
    @app.errorhandler(Denied)
    def _api_error(exc: ApiError | Denied) -> tuple[Response, int]:
        response, status = error_response(exc.status, exc.code, exc.message)
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="heimdall"'
        return response, status

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> tuple[Response, int]:
        code = (exc.name or "error").lower().replace(" ", "_")
        message = exc.description or exc.name
        if exc.code == 413:
            message = f"request body larger than {settings.max_body_bytes} bytes"
        if exc.code == 429:
            message = (
                f"rate limit of this API key reached ({exc.description}); "
                "retry after the seconds in the Retry-After header"
            )
        return error_response(exc.code or 500, code, message)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> tuple[Response, int]:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal error; the event was logged")

    def submit_one(iq: Any, fields: dict[str, Any], batch_id: str | None = None) -> Accepted:
        """Validate and accept one capture, or raise the ApiError that says why not."""
        try:
            job_id = parse_job_id(fields.get("job_id"))
            meta = parse_meta(fields, limits, metadata.receiver_ids)
            iq = validate_iq(iq, limits)
        except CaptureTooLarge as exc:
            raise ApiError(413, "capture_too_large", str(exc)) from None
        except CaptureError as exc:
            raise ApiError(422, "invalid_capture", str(exc)) from None
        model = check_model_request(fields.get("model"))
        try:
            return submitter.submit(iq, meta, job_id, batch_id, model, principal_tenant())
        except JobConflict as exc:
            raise ApiError(409, "job_id_conflict", str(exc)) from None
        except ServiceUnavailable as exc:
            raise ApiError(503, "service_unavailable", str(exc)) from None

    def check_model_request(value: object) -> str | None:
        """A client may name a registry version or alias instead of the A/B split."""
        if value is None or value == "":
            return None
        if not isinstance(value, str) or not MODEL_REF_PATTERN.match(value):
            raise ApiError(422, "invalid_model", "model must be a registry version number or alias")
        if settings.model_source == "registry":
            try:
                open_registry(settings).resolve(value)
            except RegistryError as exc:
                raise ApiError(422, "unknown_model", str(exc)) from None
        elif value not in ("champion", metadata.version):
            raise ApiError(422, "unknown_model", f"this service serves only {metadata.version!r}")
        return value

    def accept(iq: Any, fields: dict[str, Any]) -> tuple[Response, int]:
        accepted = submit_one(iq, fields)
        status_url = url_for("get_job", job_id=accepted.job_id)
        response = jsonify(describe_accepted(accepted, status_url))
        response.headers["Location"] = status_url
        return response, 202

    def json_capture_iq(document: object) -> Any:
        if not isinstance(document, dict):
            raise ApiError(422, "invalid_capture", "a capture must be a JSON object")
        if "iq_data" not in document:
            raise ApiError(422, "invalid_capture", "iq_data is required")
        try:
            return decode_json_iq(document["iq_data"])
        except CaptureError as exc:
            raise ApiError(422, "invalid_capture", str(exc)) from None

    def lookup_job(job_id: str) -> dict[str, Any]:
        """A job's view: Redis first, PostgreSQL (the record of truth) when Redis has none."""
        if not JOB_ID_PATTERN.match(job_id):  # no job can have such an id (NUL bytes and the like)
            raise ApiError(404, "job_not_found", f"no job with id {job_id!r}")
        try:
            cached = store.get_result(job_id)
        except TRANSIENT_ERRORS:
            cached = None  # Redis is a cache here
        if cached is not None and "tenant" in cached:
            view = cached
        else:
            try:
                row = jobs.get(job_id)
            except TRANSIENT_ERRORS:
                raise ApiError(
                    503, "service_unavailable", "the job database is unavailable"
                ) from None
            if row is None:
                raise ApiError(404, "job_not_found", f"no job with id {job_id!r}")
            view = job_view(row)
        if not readable(view.get("tenant")):  # another tenant's job: as if there were none
            raise ApiError(404, "job_not_found", f"no job with id {job_id!r}")
        return view

    def geojson(result: dict[str, Any]) -> dict[str, Any]:
        return feature_collection(result, [(r.id, r.lat, r.lon) for r in metadata.receivers])

    @app.post("/predict")
    def predict() -> tuple[Response, int]:
        content_type = (request.mimetype or "").lower()
        if content_type == "application/json":
            body = request.get_json(silent=True)
            if not isinstance(body, dict):
                raise ApiError(400, "invalid_json", "body must be a JSON object")
            return accept(json_capture_iq(body), body)
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

    @app.post("/predict-batch")
    def predict_batch() -> tuple[Response, int]:
        content_type = (request.mimetype or "").lower()
        items: list[tuple[Any, dict[str, Any]]] = []
        if content_type == "application/json":
            body = request.get_json(silent=True)
            if not isinstance(body, dict) or not isinstance(body.get("captures"), list):
                raise ApiError(
                    400, "invalid_json", 'body must be a JSON object {"captures": [...]}'
                )
            documents = body["captures"]
            check_batch_size(len(documents))
            for document in documents:
                try:
                    items.append((json_capture_iq(document), document))
                except ApiError as exc:
                    items.append((exc, {}))
        elif content_type in NPY_TYPES:
            try:
                stack = decode_npy(request.get_data(cache=False))
            except CaptureError as exc:
                raise ApiError(400, "invalid_npy", str(exc)) from None
            if stack.ndim != 3:
                raise ApiError(
                    422,
                    "invalid_capture",
                    f"batch array must be (k, 3, n); got {tuple(stack.shape)}",
                )
            check_batch_size(stack.shape[0])
            fields = request.args.to_dict()
            job_ids = [j for j in fields.pop("job_ids", "").split(",") if j]
            if job_ids and len(job_ids) != stack.shape[0]:
                raise ApiError(422, "invalid_capture", "job_ids must name one id per capture")
            for index in range(stack.shape[0]):
                extra = {"job_id": job_ids[index]} if job_ids else {}
                items.append((np.ascontiguousarray(stack[index]), {**fields, **extra}))
        else:
            raise ApiError(
                415,
                "unsupported_media_type",
                "send application/json, or application/x-npy (k, 3, n)",
            )
        batch_id = str(uuid.uuid4())
        results: list[dict[str, Any]] = []
        for index, (iq, fields) in enumerate(items):
            try:
                if isinstance(iq, ApiError):
                    raise iq
                accepted = submit_one(iq, fields, batch_id)
            except ApiError as exc:
                if exc.status == 503:
                    raise  # nothing more can be accepted now; the earlier ones stay accepted
                results.append(
                    {"index": index, "error": {"code": exc.code, "message": exc.message}}
                )
                continue
            results.append(
                {
                    "index": index,
                    **describe_accepted(accepted, url_for("get_job", job_id=accepted.job_id)),
                }
            )
        accepted_count = sum("job_id" in r for r in results)
        body = {
            "batch_id": batch_id if accepted_count else None,
            "status_url": url_for("get_batch", batch_id=batch_id) if accepted_count else None,
            "accepted": accepted_count,
            "rejected": len(results) - accepted_count,
            "jobs": results,
        }
        if not accepted_count:
            body["error"] = {
                "code": "no_capture_accepted",
                "message": f"none of the {len(results)} captures was accepted; see jobs[].error",
            }
            return jsonify(body), 422
        return jsonify(body), 202

    def check_batch_size(count: int) -> None:
        if count == 0:
            raise ApiError(422, "invalid_capture", "the batch holds no captures")
        if count > settings.max_batch_captures:
            raise ApiError(
                413,
                "batch_too_large",
                f"{count} captures in one batch; at most {settings.max_batch_captures} accepted",
            )

    @app.get("/batches/<batch_id>")
    def get_batch(batch_id: str) -> tuple[Response, int]:
        if not JOB_ID_PATTERN.match(batch_id):
            raise ApiError(404, "batch_not_found", f"no batch with id {batch_id!r}")
        try:
            rows = jobs.batch(batch_id)
        except TRANSIENT_ERRORS:
            raise ApiError(503, "service_unavailable", "the job database is unavailable") from None
        rows = [row for row in rows if readable(row["tenant"])]
        if not rows:
            raise ApiError(404, "batch_not_found", f"no batch with id {batch_id!r}")
        views = [job_view(row) for row in rows]
        counts: dict[str, int] = {}
        for view in views:
            counts[view["status"]] = counts.get(view["status"], 0) + 1
        return jsonify({"batch_id": batch_id, "counts": counts, "jobs": views}), 200

    @app.get("/jobs/<job_id>")
    def get_job(job_id: str) -> tuple[Response, int]:
        view = lookup_job(job_id)
        includes = {part.strip() for part in request.args.get("include", "").split(",") if part}
        if "geojson" in includes and view["status"] == "succeeded":
            view = {**view, "geojson": geojson(view["result"])}
        return jsonify(view), 200

    @app.get("/uncertainty-ellipse")
    def uncertainty_ellipse() -> tuple[Response, int]:
        job_id = request.args.get("job_id", "")
        if not job_id:
            raise ApiError(400, "missing_job_id", "give the job as ?job_id=...")
        view = lookup_job(job_id)
        if view["status"] != "succeeded":
            raise ApiError(
                409, "job_not_succeeded", f"job {job_id!r} is {view['status']}; no ellipse to draw"
            )
        result = view["result"]
        return jsonify(
            {
                "job_id": job_id,
                "model_version": view["model_version"],
                "center": {"lat": result["lat"], "lon": result["lon"]},
                "sigma_east_m": result["sigma_x_m"],
                "sigma_north_m": result["sigma_y_m"],
                "rho": result.get("rho", 0.0),
                "orientation_convention": result["ellipse_orientation_convention"],
                "ellipses": {
                    level: {k: v for k, v in shape.items() if k != "polygon"}
                    for level, shape in result["ellipses"].items()
                },
                "geojson": geojson(result),
            }
        ), 200

    @app.get("/health")
    def health() -> tuple[Response, int]:
        checks = {
            "broker": _check(lambda: probe_broker(settings.broker_url)),
            "redis": _check(store.ping),
            "database": _check(jobs.ping),
        }
        model = _model_check(settings, model_dir, store)
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
        return {"ok": False, "error": redact_secrets(f"{type(exc).__name__}: {exc}")}
    return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1e3, 2)}


def _model_check(settings: Settings, model_dir: Path, store: RedisStore) -> dict[str, Any]:
    """The configured model is intact and at least one worker on this queue has it loaded."""
    try:
        metadata = load_metadata(model_dir, verify=True)
    except ModelError as exc:
        return {"ok": False, "error": str(exc), "workers": []}
    try:
        workers = serving_workers(settings, store)
    except TRANSIENT_ERRORS as exc:
        return {
            "ok": False,
            "error": redact_secrets(f"cannot read worker heartbeats: {exc}"),
            "workers": [],
        }
    body: dict[str, Any] = {
        "ok": bool(workers),
        "configured_version": metadata.version,
        "workers": workers,
    }
    if not workers:
        body["error"] = "no worker is serving this queue"
    return body


class QueueDepth:
    """Collector of the ready messages and consumers of the inference queue and its dead-letter
    queue, asked of RabbitMQ at scrape time."""

    def __init__(self, broker_url: str, queue: str) -> None:
        self.broker_url, self.queue = broker_url, queue

    def collect(self) -> Any:
        messages = GaugeMetricFamily(
            "heimdall_queue_messages",
            "Messages waiting in the inference queue and its dead-letter queue.",
            labels=["queue"],
        )
        consumers = GaugeMetricFamily(
            "heimdall_queue_consumers", "Consumers of each queue.", labels=["queue"]
        )
        try:
            with kombu.Connection(self.broker_url, connect_timeout=1) as connection:
                for name in (self.queue, dead_letter_queue_name(self.queue)):
                    channel = connection.channel()
                    try:
                        declared = channel.queue_declare(name, passive=True)
                    except amqp.exceptions.NotFound:
                        continue  # not declared yet (no worker has started)
                    finally:
                        if channel.is_open:
                            channel.close()
                    messages.add_metric([name], declared.message_count)
                    consumers.add_metric([name], declared.consumer_count)
        except Exception as exc:  # a scrape never fails because the broker is down
            log.debug("queue depth unavailable: %s", redact_secrets(str(exc)))
            return
        yield messages
        yield consumers


MODEL_REF_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
ENDPOINT_ACCESS: dict[str, Access] = {
    "health": "open",
    "metrics": "open",
    "openapi": "open",
    "static": "open",
    "reload_model": "admin",
    "set_alias": "admin",
    "remove_alias": "admin",
}
"""What each endpoint needs; every other endpoint needs a client (or admin) key."""


def serving_workers(settings: Settings, store: RedisStore) -> list[dict[str, Any]]:
    return [w for w in store.workers() if w.get("queue") == settings.queue]


def _worker_models(worker: dict[str, Any]) -> dict[str, Any]:
    keys = ("worker_id", "generation", "challenger_fraction", "models", "last_error", "seen_at")
    return {k: worker.get(k) for k in keys}
