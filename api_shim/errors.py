"""JSON errors: ``{"error": {"code": ..., "message": ...}}`` with a 4xx for the client's mistakes
and a 503 when a service the shim needs is down."""

from __future__ import annotations

import logging

from flask import Flask, Response, current_app, jsonify
from werkzeug.exceptions import HTTPException

from api_shim.auth import Denied
from inference_worker.serving.registry import RegistryUnavailable
from inference_worker.storage.errors import TRANSIENT_ERRORS, unavailable_store
from inference_worker.urls import redact_secrets

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def unavailable(service: str) -> ApiError:
    """The 503 for a store that does not answer; the client retries later."""
    return ApiError(503, "service_unavailable", f"{service} is unavailable")


def error_response(status: int, code: str, message: str) -> tuple[Response, int]:
    return jsonify({"error": {"code": code, "message": message}}), status


def _api_error(exc: ApiError | Denied) -> tuple[Response, int]:
    response, status = error_response(exc.status, exc.code, exc.message)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="heimdall"'
    if status == 408:  # the rest of the body may still come: the connection cannot serve more
        response.headers["Connection"] = "close"
    return response, status


def _http_error(exc: HTTPException) -> tuple[Response, int]:
    code = (exc.name or "error").lower().replace(" ", "_")
    message = exc.description or exc.name
    if exc.code == 413:
        message = (
            f"request body larger than {current_app.config['MAX_CONTENT_LENGTH']} bytes (the "
            "server's HEIMDALL_MAX_BODY_BYTES)"
        )
    if exc.code == 429:
        message = (
            f"rate limit of this API key reached ({exc.description}); "
            "retry after the seconds in the Retry-After header"
        )
    return error_response(exc.code or 500, code, message)


def registry_unavailable(exc: RegistryUnavailable) -> ApiError:
    """The model registry's store is down: whatever asked it waits for it, as for a store."""
    log.warning("%s", exc)
    return ApiError(503, "registry_unavailable", str(exc))


def _registry_unavailable(exc: RegistryUnavailable) -> tuple[Response, int]:
    return _api_error(registry_unavailable(exc))


def _store_unavailable(exc: Exception) -> tuple[Response, int]:
    """A store down where no endpoint said what it means there: 503 naming it, not a 500."""
    log.warning("%s: %s: %s", unavailable_store(exc), type(exc).__name__, redact_secrets(str(exc)))
    return _api_error(unavailable(unavailable_store(exc)))


def _unexpected(exc: Exception) -> tuple[Response, int]:
    log.exception("unhandled error")
    return error_response(500, "internal_error", "internal error; the event was logged")


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(Denied, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(RegistryUnavailable, _registry_unavailable)
    for error in TRANSIENT_ERRORS:
        if issubclass(error, Exception):
            app.register_error_handler(error, _store_unavailable)
    app.register_error_handler(Exception, _unexpected)
