"""The thin HTTP shim of the Heimdall inference service (submit and poll).

``create_app`` is loaded on first use, so that ``api_shim.client`` — what producers and the
command line import — does not load the app, its stores and the feature maths with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from api_shim.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from api_shim.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
