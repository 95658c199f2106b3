"""Submitting captures (client keys): ``POST /predict`` and ``POST /predict-batch``.

The views decode the body and hand each capture to the intake path (:mod:`tasks.intake`), which
checks it, records the job, stores the IQ and publishes the task.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import numpy as np
from flask import Response, g, jsonify, request, url_for

from api_shim.auth import Audience, current_tenant
from api_shim.bodies import multipart_form, request_body
from api_shim.errors import ApiError, registry_unavailable
from api_shim.read import find_job, job_response, wait_for_final, wait_seconds
from api_shim.services import services
from inference_worker.core.capture import (
    CaptureError,
    CaptureTooLarge,
    decode_json_iq,
    decode_npy,
    parse_json,
)
from inference_worker.serving import observability
from inference_worker.serving.registry import RegistryUnavailable
from inference_worker.storage.notifications import WaitDeclined
from inference_worker.storage.statuses import FINAL_STATUSES
from tasks.captures import Capture, TdoaJob
from tasks.intake import Accepted, JobConflict, ModelRequestError, ServiceUnavailable

NPY_TYPES = ("application/x-npy", "application/octet-stream")

log = logging.getLogger(__name__)


def create_blueprint() -> Audience:
    blueprint = Audience("submit", __name__, access="client")
    blueprint.before_request(_start_timer)
    blueprint.before_request(_refuse_encoded_bodies)
    blueprint.after_request(_record_submission)
    blueprint.add_url_rule("/predict", view_func=predict, methods=["POST"])
    blueprint.add_url_rule("/predict-batch", view_func=predict_batch, methods=["POST"])
    return blueprint


def _start_timer() -> None:
    g.setdefault("started", time.perf_counter())  # set where its body began to be read


def _refuse_encoded_bodies() -> None:
    """A compressed body would be read as it is (a gzip-ed ``.npy`` was refused as "not a valid
    .npy array"): say what is wrong instead."""
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise ApiError(
            415,
            "unsupported_encoding",
            f"Content-Encoding {encoding!r} is not supported: send the body uncompressed",
        )


def _record_submission(response: Response) -> Response:
    if "started" in g and request.endpoint:
        # A submission that then waits for its result (?wait=) counts until it was accepted.
        elapsed = g.get("accepted", time.perf_counter()) - g.started
        status = 202 if "accepted" in g else response.status_code
        endpoint = request.endpoint.rpartition(".")[2]
        observability.record_submission(endpoint, status, elapsed)
    return response


def submit_one(iq: Any, fields: dict[str, Any], batch_id: str | None = None) -> Accepted:
    """Check and accept one capture, or raise the ApiError that says why not."""
    return accepted(checked(iq, fields), batch_id)


def accepted(capture: Capture | TdoaJob, batch_id: str | None = None) -> Accepted:
    """A checked capture accepted by the intake path, or the ApiError that says why not."""
    try:
        return services().intake.accept(capture, batch_id=batch_id, tenant=current_tenant())
    except JobConflict as exc:
        raise ApiError(409, "job_id_conflict", str(exc)) from None
    except ServiceUnavailable as exc:
        raise ApiError(503, "service_unavailable", str(exc)) from None


@contextmanager
def refusals() -> Iterator[None]:
    """A capture's check: its errors as the ApiErrors that answer them."""
    try:
        yield
    except RegistryUnavailable as exc:  # a model named while the registry does not answer
        raise registry_unavailable(exc) from None
    except CaptureTooLarge as exc:
        raise ApiError(413, "capture_too_large", str(exc)) from None
    except ModelRequestError as exc:
        raise ApiError(422, exc.code, str(exc)) from None
    except CaptureError as exc:
        raise ApiError(422, "invalid_capture", str(exc)) from None


def checked(iq: Any, fields: dict[str, Any], look_up_model: bool = True) -> Capture:
    """The capture checked by the intake path, or the ApiError that says what is wrong."""
    with refusals():
        return services().intake.check(iq, fields, look_up_model=look_up_model)


def submit_tdoa() -> Accepted:
    """A TDoA submission: ``multipart/form-data`` with one ``capture`` file part per receiver
    (KiwiSDR IQ WAV) and the fields ``receivers`` (JSON list of {id, lat, lon}, in the order of
    the files), ``frequency_mhz`` and optional ``job_id``, ``capture_time`` and
    ``expect_emitter``."""
    form, parts = multipart_form()
    uploads = [part for part in parts if part.name == "capture"]
    if not uploads:
        raise ApiError(
            422,
            "invalid_capture",
            "send one file part named 'capture' per receiver (KiwiSDR IQ WAV files)",
        )
    files, names = [upload.data for upload in uploads], [upload.filename for upload in uploads]
    with refusals():  # too large: a body under the shim's bound holds less than the files
        capture = services().intake.check_tdoa(files, names, form)
    return accepted(capture)


def json_capture_iq(document: object) -> Any:
    if not isinstance(document, dict):
        raise ApiError(422, "invalid_capture", "a capture must be a JSON object")
    if "iq_data" not in document:
        raise ApiError(422, "invalid_capture", "iq_data is required")
    try:
        return decode_json_iq(document["iq_data"])
    except CaptureError as exc:
        raise ApiError(422, "invalid_capture", str(exc)) from None


def json_object_body(shape: str) -> dict[str, Any]:
    """The JSON body as an object; a 400 ``invalid_json`` says whether the body is not JSON at
    all (with the parser's reason) or JSON of another ``shape``."""
    try:
        body = parse_json(request_body())
    except ValueError as exc:  # not JSON, not UTF-8, or nested past the parser's depth
        raise ApiError(400, "invalid_json", f"body is not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", f"body must be {shape}")
    return body


def npy_body() -> np.ndarray:
    try:
        return decode_npy(request_body())
    except CaptureError as exc:
        raise ApiError(400, "invalid_npy", str(exc)) from None


def predict() -> tuple[Response, int]:
    wait_s = wait_seconds()  # checked before anything is accepted
    content_type = (request.mimetype or "").lower()
    if content_type == "application/json":
        body = json_object_body("a JSON object")
        accepted = submit_one(json_capture_iq(body), body)
    elif content_type in NPY_TYPES:
        accepted = submit_one(npy_body(), request.args.to_dict())
    elif content_type == "multipart/form-data":
        accepted = submit_tdoa()
    else:
        raise ApiError(
            415,
            "unsupported_media_type",
            "send application/json, application/x-npy with metadata in the query string, or "
            "multipart/form-data with KiwiSDR IQ WAV files (time differences of arrival)",
        )
    status_url = url_for("read.get_job", job_id=accepted.job_id)
    if wait_s:
        g.accepted = time.perf_counter()
        final = finished_view(accepted, wait_s)
        if final is not None:
            response = job_response(*final)
            response.headers["Location"] = status_url
            return response, 200
    response = jsonify(accepted.describe(status_url))
    response.headers["Location"] = status_url
    return response, 202


def finished_view(accepted: Accepted, wait_s: float) -> tuple[dict[str, Any], bytes | None] | None:
    """``?wait=S`` on a submission: the job's view once it is final (at once for a capture
    answered from the result cache or a job that was final already), or None when ``wait_s``
    passed first, or the view could not be read (the job stays accepted: the 202 says where to
    ask)."""
    try:
        if accepted.status in FINAL_STATUSES:
            view, cached = find_job(accepted.job_id)
        else:
            view, cached = wait_for_final(accepted.job_id, wait_s)
    except (ApiError, WaitDeclined):  # a store is down, or the process holds as many waits
        return None  # as it may: the job is accepted all the same (the 202 says where to ask)
    return (view, cached) if view["status"] in FINAL_STATUSES else None


def batch_items() -> list[tuple[Any, dict[str, Any]]]:
    """The batch's captures as (IQ or the ApiError that refuses it, fields)."""
    content_type = (request.mimetype or "").lower()
    items: list[tuple[Any, dict[str, Any]]] = []
    if content_type == "application/json":
        shape = 'a JSON object {"captures": [...]}'
        body = json_object_body(shape)
        if not isinstance(body.get("captures"), list):
            raise ApiError(400, "invalid_json", f"body must be {shape}")
        documents = body["captures"]
        check_batch_size(len(documents))
        for document in documents:
            try:
                items.append((json_capture_iq(document), document))
            except ApiError as exc:
                items.append((exc, {}))
        return items
    if content_type not in NPY_TYPES:
        raise ApiError(
            415, "unsupported_media_type", "send application/json, or application/x-npy (k, 3, n)"
        )
    stack = npy_body()
    if stack.ndim != 3:
        raise ApiError(
            422, "invalid_capture", f"batch array must be (k, 3, n); got {tuple(stack.shape)}"
        )
    check_batch_size(stack.shape[0])
    fields = request.args.to_dict()
    job_ids = [j for j in fields.pop("job_ids", "").split(",") if j]
    if job_ids and len(job_ids) != stack.shape[0]:
        raise ApiError(422, "invalid_capture", "job_ids must name one id per capture")
    for index in range(stack.shape[0]):
        extra = {"job_id": job_ids[index]} if job_ids else {}
        items.append((np.ascontiguousarray(stack[index]), {**fields, **extra}))
    return items


def check_batch_size(count: int) -> None:
    limit = services().settings.max_batch_captures
    if count == 0:
        raise ApiError(422, "invalid_capture", "the batch holds no captures")
    if count > limit:
        raise ApiError(
            413, "batch_too_large", f"{count} captures in one batch; at most {limit} accepted"
        )


def predict_batch() -> tuple[Response, int]:
    """Each capture accepted or refused on its own. A service that becomes unavailable part way
    (a store down, a full queue, the registry for a named model) or an unexpected error ends the
    batch: the captures accepted before it stay accepted and are listed (``202``), the one that
    met it carries its error and every later one is checked but not tried — its own error if it
    is invalid, else ``not tried`` with the outage's code — so the client submits just those
    again. Only when nothing was accepted is the answer the outage's ``503`` (or ``500``)."""
    batch_id = str(uuid.uuid4())
    results: list[dict[str, Any]] = []
    statuses: list[int] = []  # each capture's, as it would have been answered alone
    stopped: ApiError | None = None
    for index, (iq, fields) in enumerate(batch_items()):
        try:
            if isinstance(iq, ApiError):
                raise iq
            if stopped is not None:
                not_tried(iq, fields, stopped)
            accepted = batch_capture(iq, fields, batch_id)
        except ApiError as exc:
            if exc.status >= 500 and stopped is None:
                stopped = exc
            results.append({"index": index, "error": {"code": exc.code, "message": exc.message}})
            statuses.append(exc.status)
            continue
        status_url = url_for("read.get_job", job_id=accepted.job_id)
        results.append({"index": index, **accepted.describe(status_url)})
        statuses.append(202)
    accepted_count = sum("job_id" in r for r in results)
    observability.record_batch_captures(statuses)
    if stopped is not None and not accepted_count:
        raise stopped  # the whole batch can be submitted again
    body: dict[str, Any] = {
        "batch_id": batch_id if accepted_count else None,
        "status_url": url_for("read.get_batch", batch_id=batch_id) if accepted_count else None,
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


def batch_capture(iq: Any, fields: dict[str, Any], batch_id: str) -> Accepted:
    """One capture of a batch; an unexpected error is logged and refuses this capture alone, so
    the answer still lists the captures accepted before it."""
    try:
        return submit_one(iq, fields, batch_id)
    except ApiError:
        raise
    except Exception:
        log.exception("unhandled error accepting a batch's capture")
        raise ApiError(500, "internal_error", "internal error; the event was logged") from None


def not_tried(iq: Any, fields: dict[str, Any], stopped: ApiError) -> NoReturn:
    """A capture after the batch was stopped: refused with what is wrong with it, if anything
    (checked without asking the model registry), else as not tried."""
    checked(iq, fields, look_up_model=False)
    raise ApiError(stopped.status, stopped.code, f"not tried: {stopped.message}")
