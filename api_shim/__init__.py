"""The thin HTTP shim of the Heimdall inference service (submit and poll)."""

from api_shim.app import create_app

__all__ = ["create_app"]
