"""Reading results (client keys): jobs, batches, ellipses and the served model's description.

A job is read from Redis first and from PostgreSQL, the record of truth, when Redis has none. A
client key sees the jobs of its own tenant only; another tenant's job answers 404, as if there
were none.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Response, jsonify, request

from api_shim.auth import Audience, may_read
from api_shim.bodies import client_gone
from api_shim.errors import ApiError, unavailable
from api_shim.services import services
from inference_worker.core.capture import JOB_ID_PATTERN
from inference_worker.core.ellipse import feature_collection, tdoa_feature_collection
from inference_worker.serving import observability
from inference_worker.storage.errors import TRANSIENT_ERRORS
from inference_worker.storage.notifications import WaitDeclined
from inference_worker.storage.statuses import FINAL_STATUSES
from inference_worker.storage.views import job_view

WAIT_AGAIN_AFTER_S = 1
"""``Retry-After`` of a wait answered at once because the process held as many as it may."""


def create_blueprint() -> Audience:
    blueprint = Audience("read", __name__, access="client")
    blueprint.add_url_rule("/jobs/<job_id>", view_func=get_job)
    blueprint.add_url_rule("/jobs/<job_id>/map.png", view_func=get_map)
    blueprint.add_url_rule("/batches/<batch_id>", view_func=get_batch)
    blueprint.add_url_rule("/uncertainty-ellipse", view_func=uncertainty_ellipse)
    blueprint.add_url_rule("/model/info", view_func=model_info)
    return blueprint


def lookup_job(job_id: str) -> dict[str, Any]:
    """A job's view: Redis first, PostgreSQL (the record of truth) when Redis has none."""
    return find_job(job_id)[0]


def find_job(job_id: str, pending: bool = False) -> tuple[dict[str, Any], bytes | None]:
    """A job's view, and its JSON as Redis holds it when it came from there (404 if none).

    Redis answers for a final job. A job that is not final yet is read from its row, unless
    ``pending``: then the note the shim left when it accepted the job will do (it says the job
    exists and whose it is, which is all a request about to wait for it needs).
    """
    if not JOB_ID_PATTERN.match(job_id):  # no job can have such an id (NUL bytes and the like)
        raise ApiError(404, "job_not_found", f"no job with id {job_id!r}")
    shim = services()
    try:
        cached = shim.store.get_result_json(job_id)
    except TRANSIENT_ERRORS:
        cached = None  # Redis is a cache here
    view = _cached_view(cached)
    if view is not None and view["status"] in FINAL_STATUSES:
        return _checked(job_id, view), cached
    if view is not None and pending and may_read(view.get("tenant")):
        return view, None
    try:
        row = shim.jobs.get(job_id)
    except TRANSIENT_ERRORS:
        raise unavailable("the job database") from None
    if row is None:
        raise ApiError(404, "job_not_found", f"no job with id {job_id!r}")
    return _checked(job_id, job_view(row)), None


def _cached_view(cached: bytes | None) -> dict[str, Any] | None:
    """The view in a cached JSON (None if there is none, or one of a release without tenants)."""
    view = None if cached is None else json.loads(cached)
    if view is None or "tenant" not in view:
        return None
    return view


def _checked(job_id: str, view: dict[str, Any]) -> dict[str, Any]:
    if not may_read(view.get("tenant")):  # another tenant's job: as if there were none
        raise ApiError(404, "job_not_found", f"no job with id {job_id!r}")
    return view


def geojson(result: dict[str, Any]) -> dict[str, Any]:
    """The result as a GeoJSON FeatureCollection: estimate, ellipses and receivers, and for a
    TDoA result its alternatives and the likelihood's contours."""
    if result.get("method") == "tdoa":
        return tdoa_feature_collection(result)
    receivers = services().model.receivers
    return feature_collection(result, [(r.id, r.lat, r.lon) for r in receivers])


def get_map(job_id: str) -> Response:
    """``GET /jobs/<id>/map.png``: the likelihood around a TDoA job's estimate."""
    view = lookup_job(job_id)
    if view["status"] != "succeeded" or (view["result"] or {}).get("method") != "tdoa":
        raise ApiError(
            404, "no_map", f"job {job_id!r} has no likelihood map (succeeded TDoA jobs have one)"
        )
    try:
        picture = services().store.get_map(job_id)
    except TRANSIENT_ERRORS:
        raise unavailable("Redis") from None
    if picture is None:
        raise ApiError(404, "no_map", f"the map of job {job_id!r} has expired")
    return Response(picture, mimetype="image/png")


def wait_seconds() -> float:
    """``?wait=S``: how long the caller will wait for the job to finish (0 without it)."""
    raw = request.args.get("wait")
    if raw is None:
        return 0.0
    most = services().settings.max_wait_s
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= most:
        raise ApiError(400, "invalid_wait", f"wait must be a number of seconds from 0 to {most:g}")
    return seconds


def get_job(job_id: str) -> tuple[Response, int]:
    wait_s = wait_seconds()
    view, cached = find_job(job_id, pending=wait_s > 0)
    if wait_s and view["status"] not in FINAL_STATUSES:
        try:
            view, cached = wait_for_final(job_id, wait_s)
        except WaitDeclined:  # as many waits held as the process may: the job as it stands
            response = job_response(view, cached)
            response.headers["Retry-After"] = str(WAIT_AGAIN_AFTER_S)
            return response, 200
    return job_response(view, cached), 200


def wait_for_final(job_id: str, wait_s: float) -> tuple[dict[str, Any], bytes | None]:
    """Hold until the job is final (woken by the worker's announcement) or ``wait_s`` passes;
    then its view as :func:`find_job` gives it.

    Raises:
        WaitDeclined: the process holds as many waits as it may (``HEIMDALL_API_MAX_WAITS``);
            counted in ``heimdall_api_waits_declined_total``.
    """
    shim = services()
    seen: list[tuple[dict[str, Any] | None, bytes]] = []

    def announced() -> bool:
        try:
            value = shim.store.get_result_json(job_id)
        except TRANSIENT_ERRORS:
            return False
        if value is None:
            return False
        view = _cached_view(value)
        if view is not None and view["status"] not in FINAL_STATUSES:
            return False  # the note it was accepted with: not final yet
        seen.append((view, value))
        return True

    shim.work_slots.give_up()
    try:
        shim.finished.wait(job_id, wait_s, announced, client_gone)
    except WaitDeclined:
        observability.record_wait_declined()
        raise
    if seen or announced():  # woken: the final view is in Redis (unless Redis is full or down)
        view, value = seen[-1]
        if view is not None:
            return _checked(job_id, view), value
    return find_job(job_id)


def job_response(view: dict[str, Any], cached: bytes | None) -> Response:
    """A job's view as ``GET /jobs/<id>`` answers it (``?include=geojson`` adds the map)."""
    includes = {part.strip() for part in request.args.get("include", "").split(",") if part}
    if "geojson" in includes and view["status"] == "succeeded":
        return jsonify({**view, "geojson": geojson(view["result"])})
    if cached is not None:  # as stored: no need to encode it again
        return Response(cached, mimetype="application/json")
    return jsonify(view)


def get_batch(batch_id: str) -> tuple[Response, int]:
    if not JOB_ID_PATTERN.match(batch_id):
        raise ApiError(404, "batch_not_found", f"no batch with id {batch_id!r}")
    try:
        rows = services().jobs.batch(batch_id)
    except TRANSIENT_ERRORS:
        raise unavailable("the job database") from None
    rows = [row for row in rows if may_read(row["tenant"])]
    if not rows:
        raise ApiError(404, "batch_not_found", f"no batch with id {batch_id!r}")
    views = [job_view(row) for row in rows]
    counts: dict[str, int] = {}
    for view in views:
        counts[view["status"]] = counts.get(view["status"], 0) + 1
    return jsonify({"batch_id": batch_id, "counts": counts, "jobs": views}), 200


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


def model_info() -> tuple[Response, int]:
    """The champion's contract: what a client needs to build captures and draw results."""
    return jsonify(services().model_info.current()), 200
