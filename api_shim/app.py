"""The HTTP shim (Flask app factory): wires the blueprints of its four audiences.

- :mod:`api_shim.submit`: submitting captures (client keys);
- :mod:`api_shim.read`: reading jobs, batches and ellipses (client keys);
- :mod:`api_shim.operate`: models, aliases and reloads (admin keys);
- :mod:`api_shim.infra`: health, metrics and the OpenAPI document (open).

It never runs the model: the intake path (:mod:`tasks.intake`) validates, records the job,
stores the IQ and publishes the task.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from api_shim import infra, operate, read, submit
from api_shim.auth import KeyRing, current_principal, install_access
from api_shim.errors import register_error_handlers
from api_shim.services import build_services
from inference_worker.serving.memory import retain_freed_memory
from inference_worker.settings import Settings, load_settings
from inference_worker.storage.redis_store import connect

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Flask:
    """Build the shim. Connections are opened lazily, on the first request that needs them."""
    settings = settings or load_settings()
    retain_freed_memory(settings.retain_freed_mb)  # this process and those forked from it
    # A multipart body the parser cannot read is the client's 422, which says why (bodies.py);
    # the parser would log each one as a warning too.
    logging.getLogger("python_multipart").setLevel(logging.ERROR)
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["heimdall"] = services = build_services(settings)

    keyring = KeyRing(settings)
    if not keyring.keys_required:
        log.warning("no API keys configured (HEIMDALL_API_KEYS): submitting and polling are open")
    install_access(app, keyring)
    if keyring.keys_required or keyring.admin_possible:
        install_rate_limits(app, settings)  # limits are per key: without keys there are none
    services.work_slots.install(app)  # after the access checks: a refused request takes none
    register_error_handlers(app)
    for module in (submit, read, operate, infra):
        app.register_blueprint(module.create_blueprint())
    return app


def principal_limit(settings: Settings) -> str:
    principal = current_principal()
    return principal.rate_limit if principal else settings.api_rate_limit


def install_rate_limits(app: Flask, settings: Settings) -> None:
    """Per-key rate limits, counted in Redis so every shim process shares them."""

    def rate_limited_key() -> str:
        principal = current_principal()
        return f"key:{principal.name}" if principal else f"addr:{get_remote_address()}"

    # The store's timeouts, and the breaker of a Redis that stopped answering: a limit checked
    # on a silent Redis waited out redis-py's defaults (no read timeout) on every request.
    pool: Any = connect(settings.redis_url).connection_pool
    limiter = Limiter(
        key_func=rate_limited_key,
        application_limits=[lambda: principal_limit(settings)],
        application_limits_exempt_when=lambda: current_principal() is None,
        storage_uri=settings.redis_url,
        storage_options={"connection_pool": pool},
        key_prefix=f"{settings.redis_prefix}ratelimit",
        strategy="fixed-window",
        headers_enabled=True,
        swallow_errors=True,  # Redis down: requests go on (the stores answer 503 themselves)
        in_memory_fallback_enabled=True,
    )
    limiter.init_app(app)
