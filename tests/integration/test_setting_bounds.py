"""The extremes each bounded setting accepts are honoured by the real services: the bounds in
:mod:`inference_worker.settings_checks` refuse what PostgreSQL, Redis, RabbitMQ or a thread's
timed wait would fail on (or, for a short statement timeout, silently not honour)."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest
import sqlalchemy as sa

from inference_worker.serving.recovery import Upkeep
from inference_worker.settings import Settings, load_settings
from inference_worker.settings_checks import (
    POSTGRESQL_TIMEOUT_MAX_S,
    RETENTION_DAYS_MAX,
    WAIT_MAX_S,
    YEAR_S,
)
from inference_worker.storage.engine import create_engine
from inference_worker.storage.maintenance import JobMaintenance
from tasks.app import create_celery, publisher
from tasks.contract import read_message
from tests.helpers import task_message
from tests.integration.helpers import delete_queues, queue_messages


def bound(name: str, side: str) -> float:
    """The bound a field declares (pydantic's ``ge`` or ``le``)."""
    for rule in Settings.model_fields[name].metadata:
        if hasattr(rule, side):
            return float(getattr(rule, side))
    raise AssertionError(f"{name} has no {side} bound")


@pytest.mark.parametrize(
    ("timeout_s", "shown"),
    [(bound("database_statement_timeout_s", "ge"), "100ms"), (POSTGRESQL_TIMEOUT_MAX_S, None)],
)
def test_statement_timeouts_at_either_bound_are_the_connections_own(settings, timeout_s, shown):
    """0.4 ms was a statement_timeout of 0 (none); past 2^31 - 1 ms no connection opened."""
    load_settings(database_statement_timeout_s=timeout_s)
    engine = create_engine(
        settings.database_url, settings.database_schema, statement_timeout_s=timeout_s
    )
    try:
        with engine.connect() as connection:
            got = connection.execute(sa.text("SHOW statement_timeout")).scalar_one()
            in_ms = connection.execute(
                sa.text("SELECT setting FROM pg_settings WHERE name = 'statement_timeout'")
            ).scalar_one()
    finally:
        engine.dispose()
    assert int(in_ms) == round(timeout_s * 1e3) > 0
    if shown:
        assert got == shown


def test_the_oldest_ages_the_settings_allow_are_queries_postgresql_answers(engine):
    """Past them, every count of stuck jobs, relay round and prune was PostgreSQL's "timestamp
    out of range" (`jobs stuck --older-than` and `jobs prune --older-than-days` take the same)."""
    settings = load_settings(
        stuck_after_s=YEAR_S,
        retention_days=RETENTION_DAYS_MAX,
        blob_ttl_s=YEAR_S,
        outbox_grace_s=YEAR_S - 1,
    )
    maintenance = JobMaintenance(engine)
    assert maintenance.count_not_final(settings.stuck_after_s) >= 0
    assert maintenance.not_final(settings.stuck_after_s, 10) is not None
    assert maintenance.unconfirmed(settings.outbox_grace_s) is not None
    assert maintenance.prune(settings.retention_days, batch=10, max_batches=1) >= 0


def test_the_longest_lifetimes_are_ones_redis_keeps(stores):
    _, store = stores
    key = store.blob_key(uuid.uuid4().hex, "0" * 64)
    store.put_blob(key, b"iq", YEAR_S)
    store.put_result("bounds-" + uuid.uuid4().hex, {"status": "done"}, YEAR_S)
    assert store.get_blob(key) == b"iq"
    assert YEAR_S - 5 <= store.client.ttl(key) <= YEAR_S
    store.delete_blob(key)


def test_the_relay_waits_its_longest_interval_and_stops_when_asked(settings, stores):
    """An interval past a timed wait's range raised OverflowError, and the relay thread ended."""
    local = settings.model_copy(update={"relay_interval_s": WAIT_MAX_S})
    upkeep = Upkeep(local, lambda: pytest.fail("no round runs"), lambda message: None)
    upkeep.start()
    time.sleep(0.3)
    assert upkeep._thread is not None and upkeep._thread.is_alive()
    upkeep.stop()
    upkeep._thread.join(timeout=5)
    assert not upkeep._thread.is_alive()


def test_a_publish_waits_the_longest_confirm_timeout(settings):
    queue = f"{settings.queue}.bounds{uuid.uuid4().hex[:6]}"
    app = create_celery(settings.broker_url, queue)
    publish = publisher(app, queue, bound("publish_confirm_timeout_s", "le"))
    try:
        publish(read_message(task_message(np.ones((3, 4), np.complex64), "bounds", "blob:b")))
        assert queue_messages(settings.broker_url, queue) == 1
    finally:
        delete_queues(settings.broker_url, queue)
        app.close()
