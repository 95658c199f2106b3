"""WSGI entry point: ``gunicorn api_shim.wsgi:app``."""

from api_shim.app import create_app

app = create_app()
