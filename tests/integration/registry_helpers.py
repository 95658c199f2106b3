"""Helpers of the registry tests: a PostgreSQL database of a test's own for the model registry,
switched off and on as clients see an outage, and the CLI and settings that use it."""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from inference_worker.serving.registry import ModelRegistry, open_registry
from inference_worker.settings import Settings
from inference_worker.urls import postgresql_url
from tests.integration.helpers import worker_env

ADMIN = "registry-admin-token"
COMMAND_TIMEOUT_S = 60  # far above a refusal's few seconds, far below MLflow's own retries


@contextmanager
def own_registry_database(settings: Settings) -> Iterator[tuple[str, sa.Engine]]:
    """A database of the caller's own for the registry; its URL in the plain ``postgresql://``
    form operators copy, and an engine on the server's maintenance database to switch it off."""
    name = f"heimdall_registry_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(
        sa.make_url(settings.database_url).set(database="postgres"),
        isolation_level="AUTOCOMMIT",
        poolclass=sa.pool.NullPool,
    )
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = (
        sa.make_url(settings.database_url)
        .set(drivername="postgresql", database=name)
        .render_as_string(hide_password=False)
    )
    try:
        yield url, admin
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def switch(admin: sa.Engine, url: str, *, on: bool) -> None:
    """Let the registry's database take connections, or refuse every new one (an outage as
    clients see it: "database ... is not currently accepting connections")."""
    name = sa.make_url(url).database
    with admin.connect() as connection:
        connection.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(on).lower()}'))
        if not on:
            connection.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"
                ),
                {"name": name},
            )


def run_cli(settings: Settings, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "inference_worker.cli", *args]
    return subprocess.run(
        command,
        env={**worker_env(settings), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
    )


def registry_env(data_dir: Path, registry_uri: str) -> dict[str, str]:
    return {
        "HEIMDALL_MODEL_SOURCE": "registry",
        "HEIMDALL_DATA_DIR": str(data_dir),
        "HEIMDALL_REGISTRY_URI": registry_uri,
    }


def in_registry_mode(
    settings: Settings, url: str, tmp_path: Path, redis_prefix: str, **more: object
) -> Settings:
    """This session's settings serving the registry at ``url`` (as the settings load it), with
    a data folder and Redis keys of the test's own."""
    return settings.model_copy(
        update={
            "model_source": "registry",
            "registry_uri": postgresql_url(url, driver_required=False),
            "data_dir": tmp_path / "data",
            "redis_prefix": settings.redis_prefix + redis_prefix,
            **more,
        }
    )


def bootstrapped(
    settings: Settings, url: str, tmp_path: Path, tag: str, **more: object
) -> tuple[Settings, ModelRegistry]:
    """:func:`in_registry_mode` settings with a job schema and Redis keys named by ``tag``, and
    their registry holding the reference model as champion."""
    local = in_registry_mode(
        settings,
        url,
        tmp_path,
        database_schema=f"{settings.database_schema}_{tag}",
        redis_prefix=f"registry-{tag}:",
        **more,
    )
    registry = open_registry(local)
    registry.bootstrap(local.model_dir)
    return local, registry


@contextmanager
def closed_port() -> Iterator[int]:
    """A port on this machine that refuses connections while the socket is held."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: a connection is refused
        yield int(sock.getsockname()[1])
