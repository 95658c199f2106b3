"""A PostgreSQL that stops answering without closing its connections (paused, a stalled host)
is given up on after a limit, not waited on forever; then the service's calls to it fail at once
for a while, and no job already accepted is lost.

The database is the real one, reached through a relay that goes silent
(:class:`~tools.silent_relay.SilentProxy`). Before: a statement sent to such a server
waited until it answered again (the kernel acknowledges what is sent, so neither keepalives nor
the server's statement timeout end the wait): a submission and ``/health`` were held past 70 s.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from api_shim.app import create_app
from inference_worker.cli.processes import wait_until
from inference_worker.storage.database import JobStore
from inference_worker.storage.database_silence import DatabaseSilent
from inference_worker.storage.engine import create_engine
from tests.integration.helpers import produce, submit_npy
from tools.silent_relay import SilentProxy

STATEMENT_TIMEOUT_S = 0.5
"""The tests' statement timeout: a statement is given up on 2 s after it (2.5 s)."""


@pytest.fixture
def proxy(settings) -> Iterator[SilentProxy]:
    url = sa.engine.make_url(settings.database_url)
    relay = SilentProxy(url.host or "127.0.0.1", url.port or 5432)
    yield relay
    relay.close()


def through(settings, proxy: SilentProxy) -> str:
    url = sa.engine.make_url(settings.database_url).set(host="127.0.0.1", port=proxy.port)
    return url.render_as_string(hide_password=False)


def silent_cause(error: BaseException) -> str:
    assert isinstance(error, sa.exc.OperationalError), error  # a transient store error
    assert isinstance(error.orig, DatabaseSilent), error.orig
    return str(error.orig)


@pytest.mark.timeout(60, method="thread")  # libpq waiting in C outlasts a signal
def test_a_statement_never_answered_fails_then_the_next_fail_without_asking(
    settings, engine, proxy
):
    store = JobStore(
        create_engine(
            through(settings, proxy),
            settings.database_schema,
            statement_timeout_s=STATEMENT_TIMEOUT_S,
        )
    )
    store.ping()
    with proxy.silent():
        with pytest.raises(sa.exc.OperationalError) as waited:
            store.ping()
        assert "answered nothing in 2.5 s (a statement)" in silent_cause(waited.value)
        connections = proxy.connections
        with pytest.raises(sa.exc.OperationalError) as at_once:
            store.ping()
        assert "PostgreSQL did not answer" in silent_cause(at_once.value)
        assert proxy.connections == connections  # not asked: no connection was attempted
    # the relay speaks again: once the window after the silence passes, a ping answers
    wait_until("a ping answered", lambda: answers(store), 20)
    store.engine.dispose()


def answers(store: JobStore) -> bool:
    try:
        store.ping()
    except sa.exc.OperationalError:
        return False
    return True


@pytest.mark.timeout(60, method="thread")  # libpq waiting in C outlasts a signal
def test_health_and_a_submission_answer_503_naming_the_database(
    own_queue_factory, proxy, settings, capture, redis_client
):
    local, _, _ = own_queue_factory(
        database_url=through(settings, proxy), database_statement_timeout_s=STATEMENT_TIMEOUT_S
    )
    app = create_app(local)
    client = app.test_client()
    try:
        assert client.get("/health").get_json()["checks"]["database"]["ok"] is True
        with proxy.silent():
            health = client.get("/health")  # a health check waits 2 s, not the statement's 2.5
            refused = submit_npy(client, capture, job_id="silent-database")
        assert health.status_code == 503
        database = health.get_json()["checks"]["database"]
        assert database["ok"] is False
        assert "answered nothing in 2 s (a statement)" in database["error"], database
        assert refused.status_code == 503, refused.get_json()
        assert refused.get_json()["error"]["message"] == (
            "the job database is unavailable; retry later"
        )
        assert list(redis_client.scan_iter(match=f"{local.redis_prefix}*")) == []
    finally:
        app.extensions["heimdall"].jobs.engine.dispose()


@pytest.mark.timeout(180, method="thread")
def test_jobs_in_flight_when_the_database_goes_silent_all_finish(
    own_queue_factory, proxy, settings, engine, simulator, rng, tmp_path
):
    """A worker whose statements go unanswered gives up on them, waits the outage out, and
    records every job once the database answers again."""
    local, _, start_worker = own_queue_factory(
        database_url=through(settings, proxy), database_statement_timeout_s=STATEMENT_TIMEOUT_S
    )
    captures = [simulator.simulate(rng, sample_rate_hz=12_000.0, duration_s=1.0) for _ in range(8)]
    jobs = JobStore(engine)  # straight to PostgreSQL, not through the relay
    log = tmp_path / "silent-database.log"
    with start_worker("silent-database", concurrency=2):
        first = produce(local, captures[0])
        wait_until("the first job", lambda: status(jobs, first) == "succeeded", 60)
        with proxy.silent():
            ids = [produce(settings_direct(local, settings), c) for c in captures[1:]]
            gave_up = "PostgreSQL answered nothing"
            wait_until("a statement given up on", lambda: gave_up in log.read_text(), 30)
        wait_until("every job final", lambda: all(status(jobs, j) in FINAL for j in ids), 90)
    assert {status(jobs, j) for j in ids} == {"succeeded"}


FINAL = ("succeeded", "failed")


def status(jobs: JobStore, job_id: str) -> str | None:
    row = jobs.get(job_id)
    return None if row is None else row["status"]


def settings_direct(local, settings):
    """The worker's settings with the database reached directly: the jobs are produced while the
    relay is silent."""
    return local.model_copy(update={"database_url": settings.database_url})
