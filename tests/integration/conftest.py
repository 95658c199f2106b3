"""Integration fixtures: the real RabbitMQ, Redis and PostgreSQL of this machine, a real worker.

Every test session gets its own PostgreSQL schema, Redis key prefix and RabbitMQ queue, and
removes them afterwards. A service that does not answer skips these tests on a laptop and fails
them when ``CI`` is set: never a silent skip in CI.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import kombu
import pytest
import redis
import sqlalchemy as sa

from api_shim.app import create_app
from inference_worker.cli.processes import cli_process, wait_until
from inference_worker.settings import Settings, load_settings
from inference_worker.storage.database import JobStore
from inference_worker.storage.reachability import unreachable_services
from inference_worker.storage.redis_store import RedisStore, connect
from tests.integration.helpers import (
    delete_queues,
    free_port,
    migrated_schema,
    queue_consumers,
    worker_env,
)
from tests.integration.registry_helpers import closed_port, own_registry_database
from tools.silent_relay import SilentProxy

pytestmark = pytest.mark.integration
WORKER_START_TIMEOUT_S = 60


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def settings() -> Settings:
    base = load_settings()
    failures = unreachable_services(base)
    if failures:
        message = "; ".join(failures.values())
        if os.environ.get("CI"):
            pytest.fail(f"integration services unavailable in CI: {message}")
        pytest.skip(f"integration services unavailable: {message}")
    tag = uuid.uuid4().hex[:10]
    return load_settings(
        database_schema=f"test_{tag}",
        redis_prefix=f"heimdall-test:{tag}:",
        queue=f"heimdall.test.{tag}",
        worker_concurrency=1,
    )


@pytest.fixture(scope="session")
def engine(settings: Settings) -> Iterator[sa.Engine]:
    with migrated_schema(settings.database_url, settings.database_schema) as engine:
        yield engine


@pytest.fixture(scope="session")
def redis_client(settings: Settings) -> Iterator[redis.Redis]:
    client = connect(settings.redis_url)
    yield client
    keys = list(client.scan_iter(match=f"{settings.redis_prefix}*", count=500))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="session")
def stores(
    engine: sa.Engine, redis_client: redis.Redis, settings: Settings
) -> tuple[JobStore, RedisStore]:
    return JobStore(engine), RedisStore(redis_client, settings.redis_prefix)


@pytest.fixture(scope="session")
def queue_cleanup(settings: Settings) -> Iterator[None]:
    yield
    delete_queues(settings.broker_url, settings.queue)


@pytest.fixture(scope="session")
def worker(
    settings: Settings,
    engine: sa.Engine,
    redis_client: redis.Redis,
    queue_cleanup: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[subprocess.Popen]:
    """A real ``heimdall-inference worker`` process (prefork, 1 child) on the test queue."""
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    store = RedisStore(redis_client, settings.redis_prefix)
    args = ["worker", "--concurrency", "1"]
    env = worker_env(settings)
    metrics_port = free_port()
    env["HEIMDALL_WORKER_METRICS_PORT"] = str(metrics_port)
    with cli_process(args, log_path, env) as process:
        process.metrics_port = metrics_port  # type: ignore[attr-defined]
        wait_until("the worker", lambda: bool(store.workers()), WORKER_START_TIMEOUT_S, process)
        wait_until(
            "the worker's consumer",
            lambda: queue_consumers(settings.broker_url, settings.queue) > 0,
            WORKER_START_TIMEOUT_S,
            process,
        )
        yield process


@pytest.fixture(scope="session")
def app(settings: Settings, engine: sa.Engine, redis_client: redis.Redis, queue_cleanup: None):
    app = create_app(settings)
    app.config["TESTING"] = True
    yield app
    app.extensions["heimdall"].intake.mark_published.flush()  # while the job schema is there


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def own_queue_factory(
    settings: Settings, engine: sa.Engine, redis_client: redis.Redis, tmp_path: Path
):
    """Make settings with a queue and Redis prefix of their own (and any other overrides),
    with a function that starts a real worker on them; the queues are deleted afterwards. The
    job schema exists (``engine``), so a test of its own runs alone too."""
    made: list[Settings] = []

    def make(**overrides: object):
        tag = uuid.uuid4().hex[:6]
        local = settings.model_copy(
            update={
                "queue": f"{settings.queue}.own{tag}",
                "redis_prefix": f"{settings.redis_prefix}o{tag}:",
                **overrides,
            }
        )
        made.append(local)
        env = worker_env(local)
        store = RedisStore(redis_client, local.redis_prefix)

        @contextmanager
        def start_worker(name: str, concurrency: int = 1) -> Iterator[subprocess.Popen]:
            metrics_port = free_port()
            env_here = {**env, "HEIMDALL_WORKER_METRICS_PORT": str(metrics_port)}
            args = ["worker", "--concurrency", str(concurrency)]
            with cli_process(args, tmp_path / f"{name}.log", env_here) as process:
                process.metrics_port = metrics_port  # type: ignore[attr-defined]
                yield process

        return local, store, start_worker

    yield make
    delete_queues(settings.broker_url, *(local.queue for local in made))


@pytest.fixture
def own_queue(own_queue_factory):
    return own_queue_factory()


@pytest.fixture
def registry_database(settings: Settings, engine: sa.Engine) -> Iterator[tuple[str, sa.Engine]]:
    """A registry database of the test's own: its URL, and an engine that switches it off."""
    with own_registry_database(settings) as database:
        yield database


@pytest.fixture
def refusing_port() -> Iterator[int]:
    with closed_port() as port:
        yield port


@pytest.fixture
def broker_relay(settings: Settings) -> Iterator[SilentProxy]:
    """A relay to the session's RabbitMQ that can go silent (:func:`helpers.broker_through`)."""
    broker = kombu.Connection(settings.broker_url)
    relay = SilentProxy(broker.hostname or "127.0.0.1", broker.port or 5672)
    yield relay
    relay.close()


@pytest.fixture
def redis_relay(settings: Settings) -> Iterator[SilentProxy]:
    """A relay to the session's Redis that can go silent (:func:`helpers.redis_through`)."""
    parts = urlsplit(settings.redis_url)
    relay = SilentProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    yield relay
    relay.close()
