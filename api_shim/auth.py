"""Who may do what: API keys with a role (client or admin), an optional tenant, a rate limit.

Keys come from the settings (``HEIMDALL_API_KEYS``), as the key or only its sha256. A request
names its key with ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. With no keys
configured, submitting and polling are open (a development setup) and only the admin token, if
set, opens the admin endpoints.

Access is declared per blueprint (:class:`Audience`): every route of a blueprint needs its
audience's access, and a route outside any audience needs an admin key, so access fails closed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

from flask import Blueprint, Flask, g, request

from inference_worker.settings import Settings

Access = Literal["open", "client", "admin"]
ADMIN_TOKEN_NAME = "admin-token"


@dataclass(frozen=True)
class Principal:
    name: str
    role: Literal["client", "admin"]
    tenant: str | None
    rate_limit: str

    def may_read(self, tenant: str | None) -> bool:
        """An admin reads every job; a client key reads the jobs of its own tenant only."""
        return self.role == "admin" or tenant == self.tenant


class Denied(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class KeyRing:
    def __init__(self, settings: Settings) -> None:
        self._by_digest: dict[str, Principal] = {
            key.digest: Principal(
                key.name, key.role, key.tenant, key.rate_limit or settings.api_rate_limit
            )
            for key in settings.api_keys
        }
        token = settings.admin_token.get_secret_value()
        if token:
            digest = hashlib.sha256(token.encode()).hexdigest()
            self._by_digest.setdefault(
                digest, Principal(ADMIN_TOKEN_NAME, "admin", None, settings.api_rate_limit)
            )
        self.keys_required = bool(settings.api_keys)
        self.admin_possible = any(p.role == "admin" for p in self._by_digest.values())

    def identify(self, authorization: str | None, api_key: str | None) -> Principal | None:
        """The principal the request's key belongs to; ``None`` when it sends no key.

        Raises:
            Denied: the request sends a key that is not one of ours (401).
        """
        given = api_key
        if given is None and authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise Denied(401, "unauthorized", "send Authorization: Bearer <key> or X-API-Key")
            given = value.strip()
        if given is None:
            return None
        principal = self._by_digest.get(hashlib.sha256(given.encode()).hexdigest())
        if principal is None:
            raise Denied(401, "unauthorized", "the API key is not valid")
        return principal

    def authorize(self, principal: Principal | None, access: Access) -> None:
        """Raise :class:`Denied` unless ``principal`` may use an endpoint of ``access``."""
        if access == "open":
            return
        if access == "admin":
            if not self.admin_possible:
                raise Denied(
                    403,
                    "admin_disabled",
                    "admin endpoints are off: configure an admin key (HEIMDALL_API_KEYS) or "
                    "HEIMDALL_ADMIN_TOKEN",
                )
            if principal is None:
                raise Denied(401, "unauthorized", "send Authorization: Bearer <admin key>")
            if principal.role != "admin":
                raise Denied(
                    403,
                    "forbidden",
                    f"this needs an admin key; key {principal.name!r} is a client key",
                )
            return
        if principal is None and self.keys_required:
            raise Denied(401, "unauthorized", "send Authorization: Bearer <key> or X-API-Key")


class Audience(Blueprint):
    """A blueprint for one audience of the shim; every route in it needs ``access``."""

    def __init__(self, name: str, import_name: str, *, access: Access, **kwargs: Any) -> None:
        super().__init__(name, import_name, **kwargs)
        self.access: Access = access


def required_access(app: Flask) -> Access:
    """The access the current request's route needs: its audience's, else admin."""
    if request.endpoint is None:
        return "open"  # no route matched: the answer is a 404 or 405 with nothing in it
    blueprint = app.blueprints.get(request.blueprint) if request.blueprint else None
    return blueprint.access if isinstance(blueprint, Audience) else "admin"


def install_access(app: Flask, keyring: KeyRing) -> None:
    """Check every request's key against the access its route needs (before the view runs)."""

    @app.before_request
    def _authenticate() -> None:
        principal = keyring.identify(
            request.headers.get("Authorization"), request.headers.get("X-API-Key")
        )
        keyring.authorize(principal, required_access(app))
        g.principal = principal


def current_principal() -> Principal | None:
    """The key of the request being served (``None`` when it sent none)."""
    principal: Principal | None = g.get("principal")
    return principal


def current_tenant() -> str | None:
    principal = current_principal()
    return principal.tenant if principal else None


def may_read(tenant: str | None) -> bool:
    """Whether the current request may see a job of ``tenant``."""
    principal = current_principal()
    return principal is None or principal.may_read(tenant)
