"""The service's background threads outlive a failure of any one round: a thread that ended
would stop its work for the rest of the process's life without a sign."""

from __future__ import annotations

import logging
import threading
from types import SimpleNamespace
from typing import cast

import redis.exceptions
import sqlalchemy.exc

from inference_worker.serving import runtime
from inference_worker.serving.models import ServedModels
from inference_worker.serving.runtime import ProcessRuntime
from inference_worker.settings import load_settings
from inference_worker.storage.database import JobStore
from tasks.outbox import DeferredMarks


def test_publish_marks_go_on_after_a_flush_the_database_refuses(caplog):
    """A flush that fails (here a table gone) leaves its rows to the relay, which publishes them
    again; the flushing thread lives on and marks the jobs that come after. It used to die with
    any error but a lost connection, leaving every later job to be published twice."""
    failed, marked = threading.Event(), threading.Event()
    written: list[tuple[str, ...]] = []

    class Jobs:  # a job store whose first statement fails
        def mark_published(self, *job_ids: str) -> None:
            if not failed.is_set():
                failed.set()
                cause = Exception('relation "jobs" does not exist')
                raise sqlalchemy.exc.ProgrammingError("UPDATE jobs", {}, cause)
            written.append(job_ids)
            marked.set()

    marks = DeferredMarks(cast(JobStore, Jobs()), interval_s=0.01)
    with caplog.at_level(logging.WARNING, logger="tasks.outbox"):
        marks("first")
        assert failed.wait(5)
        marks("second")
        assert marked.wait(5)
    assert written == [("second",)]
    assert "1 jobs published but not marked so" in caplog.text


def test_a_worker_heartbeat_goes_on_after_redis_refuses_one(monkeypatch, caplog):
    """A Redis that refuses a write for a reason that is not a store unavailable (NOPERM: an
    ACL that denies the command) used to end the heartbeat thread: the process went on working,
    counted as gone."""
    monkeypatch.setattr(runtime, "HEARTBEAT_INTERVAL_S", 0.01)
    refused, beaten = threading.Event(), threading.Event()

    class Store:
        def heartbeat(self, worker_id: str, info: dict, ttl_s: int) -> None:
            if not refused.is_set():
                refused.set()
                raise redis.exceptions.ResponseError(
                    "NOPERM this user has no permissions to run it"
                )
            beaten.set()

    process = ProcessRuntime(load_settings())
    process.worker_id = "host:1"
    process.served = cast(
        ServedModels, SimpleNamespace(refresh=lambda: None, describe=lambda: {"models": {}})
    )
    thread = threading.Thread(target=process._beat, args=(Store(),), daemon=True)
    with caplog.at_level(logging.ERROR, logger="inference_worker.serving.runtime"):
        thread.start()
        assert beaten.wait(5)
    process._stop.set()
    thread.join(5)
    assert "heartbeat to Redis failed" in caplog.text


def test_a_long_reload_does_not_hold_the_heartbeat(monkeypatch):
    """Idle processes followed reloads in the heartbeat thread: a reload longer than the
    heartbeat's 10 s lifetime (a large version downloaded, a registry dropping connections)
    stopped the beats, and the process looked gone meanwhile."""
    monkeypatch.setattr(runtime, "HEARTBEAT_INTERVAL_S", 0.01)
    reloading, reloaded, beat_during = threading.Event(), threading.Event(), threading.Event()

    def refresh() -> None:  # a reload that lasts until the test ends it
        reloading.set()
        reloaded.wait(10)

    class Store:
        def heartbeat(self, worker_id: str, info: dict, ttl_s: int) -> None:
            if reloading.is_set() and not reloaded.is_set():
                beat_during.set()

    process = ProcessRuntime(load_settings())
    process.worker_id = "host:1"
    process.served = cast(
        ServedModels, SimpleNamespace(refresh=refresh, describe=lambda: {"models": {}})
    )
    threads = [
        threading.Thread(target=process._follow, daemon=True),
        threading.Thread(target=process._beat, args=(Store(),), daemon=True),
    ]
    for thread in threads:
        thread.start()
    assert reloading.wait(5)
    assert beat_during.wait(5)  # beats go on while the reload lasts
    reloaded.set()
    process._stop.set()
    for thread in threads:
        thread.join(5)
