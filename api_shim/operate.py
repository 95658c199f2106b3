"""Operating the models (admin keys only, for every route here): list versions and aliases, move
or remove an alias, reload the workers.

Access is the blueprint's: a route added here needs an admin key without saying so.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Response, jsonify, request

from api_shim.auth import Audience, current_principal
from api_shim.errors import ApiError, unavailable
from api_shim.infra import serving_workers, worker_models
from api_shim.services import services
from inference_worker.core.contract import ModelError
from inference_worker.serving.aliases import alias_refusal, served_alias_refusal
from inference_worker.serving.registry import (
    ModelRegistry,
    RegistryError,
    RegistryUnavailable,
    open_registry,
)
from inference_worker.serving.reload import mirror_registry, request_reload
from inference_worker.storage.errors import TRANSIENT_ERRORS, unavailable_store

log = logging.getLogger(__name__)


def create_blueprint() -> Audience:
    blueprint = Audience("operate", __name__, access="admin")
    blueprint.add_url_rule("/models", view_func=models)
    blueprint.add_url_rule("/models/aliases/<alias>", view_func=set_alias, methods=["PUT"])
    blueprint.add_url_rule("/models/aliases/<alias>", view_func=remove_alias, methods=["DELETE"])
    blueprint.add_url_rule("/model/reload", view_func=reload_model, methods=["POST"])
    return blueprint


def json_body() -> Any:
    """The request's JSON, or None when it is not JSON (arrays or objects nested past the
    parser's depth included: Flask's ``silent`` let that error through, a 500)."""
    try:
        return request.get_json(silent=True)
    except RecursionError:
        return None


def who() -> str:
    principal = current_principal()
    return principal.name if principal else "none"


def reload_model() -> tuple[Response, int]:
    body = json_body() if request.data else {}
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "body must be a JSON object (or empty)")
    fraction = body.get("challenger_fraction")
    if fraction is not None and (
        isinstance(fraction, bool)
        or not isinstance(fraction, int | float)
        or not 0 <= fraction <= 1
    ):
        raise ApiError(422, "invalid_fraction", "challenger_fraction must be a number in [0, 1]")
    shim = services()
    try:
        asked = request_reload(
            shim.settings, shim.jobs, shim.store, None if fraction is None else float(fraction)
        )
    except RegistryUnavailable:
        raise  # 503: nothing is wrong with the request
    except (ModelError, RegistryError) as exc:
        raise ApiError(
            409, "model_refused", f"reload refused, workers keep their models: {exc}"
        ) from None
    except TRANSIENT_ERRORS as exc:
        raise unavailable(unavailable_store(exc)) from None
    log.info("reload requested by key %s: %s", who(), asked)
    return jsonify(asked), 202


def registry_for_changes() -> ModelRegistry:
    settings = services().settings
    if settings.model_source != "registry":
        raise ApiError(
            409,
            "no_registry",
            "this service serves a model folder; registry changes need "
            "HEIMDALL_MODEL_SOURCE=registry",
        )
    return open_registry(settings)


def mirror() -> None:
    shim = services()
    try:
        mirror_registry(shim.settings, shim.jobs)
    except TRANSIENT_ERRORS:
        log.warning("model_versions not mirrored now (database unavailable); next reload will")


def set_alias(alias: str) -> tuple[Response, int]:
    refusal = alias_refusal(alias)
    if refusal is not None:
        raise ApiError(422, "invalid_alias", refusal)
    body = json_body()
    version = body.get("version") if isinstance(body, dict) else None
    if isinstance(version, int) and not isinstance(version, bool):
        version = str(version)
    if not isinstance(version, str) or not version.isdigit():
        raise ApiError(422, "invalid_version", 'send {"version": "<registry version number>"}')
    registry = registry_for_changes()
    try:
        registry.set_alias(alias, version)
    except RegistryUnavailable:
        raise
    except RegistryError as exc:
        raise ApiError(404, "unknown_version", str(exc)) from None
    mirror()
    log.info("alias %s -> version %s (key %s)", alias, version, who())
    return jsonify({"alias": alias, "version": version, "aliases": registry.aliases()}), 200


def remove_alias(alias: str) -> tuple[Response, int]:
    registry = registry_for_changes()
    refusal = served_alias_refusal(services().settings, alias)
    if refusal is not None:
        raise ApiError(409, "alias_in_use", refusal)
    try:
        registry.remove_alias(alias)
    except RegistryUnavailable:
        raise
    except RegistryError as exc:
        raise ApiError(404, "unknown_alias", str(exc)) from None
    mirror()
    log.info("alias %s removed (key %s)", alias, who())
    return jsonify({"alias": alias, "aliases": registry.aliases()}), 200


def models() -> tuple[Response, int]:
    shim = services()
    settings = shim.settings
    generation, fraction = shim.store.serving_state()
    served = shim.model
    body: dict[str, Any] = {
        "source": settings.model_source,
        "name": settings.model_name if settings.model_source == "registry" else served.name,
        "generation": generation,
        "challenger_fraction": fraction,
    }
    if settings.model_source == "registry":
        registry = open_registry(settings)
        body["aliases"] = registry.aliases()
        body["versions"] = [v.to_json() for v in registry.versions()]
    else:
        body["aliases"] = {"champion": served.version}
        body["versions"] = [{"model_version": served.version, "sha256": served.sha256}]
    body["workers"] = [worker_models(w) for w in serving_workers(settings, shim.store)]
    return jsonify(body), 200
