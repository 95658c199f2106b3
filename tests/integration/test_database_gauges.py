"""The shim's PostgreSQL gauges at scrape time: a database that does not answer costs a scrape
one connect timeout, not one for each gauge (a scrape has Prometheus's 10 s in all)."""

from __future__ import annotations

import socket

from api_shim.infra import DatabaseGauges
from inference_worker.storage.engine import create_engine
from inference_worker.storage.maintenance import JobMaintenance


def test_a_database_that_does_not_answer_is_asked_once_a_scrape_and_nothing_is_said() -> None:
    silent = socket.socket()  # takes connections and never answers PostgreSQL's startup
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    port = silent.getsockname()[1]
    engine = create_engine(f"postgresql+psycopg2://heimdall@127.0.0.1:{port}/heimdall", "x")
    try:
        assert list(DatabaseGauges(JobMaintenance(engine), 60.0).collect()) == []
        silent.setblocking(False)
        attempts = 0
        while True:
            try:
                connection, _ = silent.accept()
            except BlockingIOError:
                break
            connection.close()
            attempts += 1
        assert attempts == 1  # the stuck jobs' and the connections' gauges each tried before
    finally:
        engine.dispose()
        silent.close()
