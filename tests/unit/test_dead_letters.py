"""Reading dead-lettered task messages, and the worker's retries of transient store errors."""

from __future__ import annotations

import json
import pickle
from typing import Any, cast

import pytest
import redis
import sqlalchemy.exc
from prometheus_client import REGISTRY

from inference_worker.serving.dead_letters import (
    DeadLetter,
    dead_letter_step,
    failure_reason,
    read_dead_letter,
)
from inference_worker.serving.registry import RegistryUnavailable
from inference_worker.serving.worker import with_store_retries
from inference_worker.storage.errors import DatabaseReadOnly, as_read_only, first_line
from inference_worker.storage.redis_store import ReplyParser

JOB = "acq-0001"


def celery_body(payload: object) -> bytes:
    return json.dumps([[payload], {}, {"callbacks": None}]).encode()


def test_a_dead_celery_task_names_its_job_and_why_it_died():
    headers = {"id": JOB, "x-death": [{"reason": "delivery_limit", "count": 1, "queue": "q"}]}
    letter = read_dead_letter(
        headers, celery_body({"job_id": JOB, "n_samples": 10}), "application/json"
    )
    assert letter.job_id == JOB
    assert letter.reason == "delivery_limit"
    assert letter.payload == {"job_id": JOB, "n_samples": 10}
    assert "gave up after 6 deliveries" in failure_reason(letter, 5)


def test_a_pickle_body_is_never_loaded_but_its_job_id_header_still_counts():
    body = pickle.dumps({"job_id": "x"})
    letter = read_dead_letter(
        {"id": JOB, "x-first-death-reason": "rejected"}, body, "application/x-python-serialize"
    )
    assert letter.payload is None and letter.job_id == JOB
    assert "rejected" in failure_reason(letter, 5)


@pytest.mark.parametrize(
    "headers",
    [None, {}, {"id": "../../etc"}, {"id": 7}, {"x-death": "garbage"}],
)
def test_headers_without_a_usable_job_id_give_none(headers):
    letter = read_dead_letter(headers, b"\xff\xfe not json", "application/json")
    assert letter.job_id is None
    assert isinstance(failure_reason(letter, 5), str)


def test_a_body_nested_past_the_parsers_depth_is_read_as_no_payload():
    """It raised RecursionError out of the dead-letter consumer."""
    letter = read_dead_letter({"id": JOB}, b"[" * 50_000 + b"]" * 50_000, "application/json")
    assert letter.payload is None and letter.job_id == JOB


def test_other_reasons_are_named():
    letter = DeadLetter(JOB, None, "expired", 1)
    assert "(expired)" in failure_reason(letter, 5)


def retries_counted(store: str) -> float:
    return REGISTRY.get_sample_value("heimdall_store_retries_total", {"store": store}) or 0.0


def test_transient_errors_are_retried_then_raised():
    calls: list[int] = []
    slept: list[float] = []
    counted_before = retries_counted("redis")

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise redis.exceptions.ConnectionError("down")
        return "done"

    assert with_store_retries(flaky, 5, slept.append) == "done"
    assert len(calls) == 3 and len(slept) == 2 and all(0.5 <= s <= 30 for s in slept)
    assert retries_counted("redis") == counted_before + 2  # heimdall_store_retries_total

    def down() -> str:
        raise redis.exceptions.ConnectionError("still down")

    with pytest.raises(redis.exceptions.ConnectionError):
        with_store_retries(down, 3, slept.append)


def test_a_job_waits_out_a_model_registry_that_does_not_answer():
    """A job asking for a version no process had loaded failed for good while the registry's
    store was down; it is waited out with its message in hand now, as a store is."""
    calls = []
    counted_before = retries_counted("registry")

    def fetching() -> str:
        calls.append(1)
        if len(calls) < 2:
            raise RegistryUnavailable("the model registry at http://mlflow:5000 does not answer")
        return "done"

    assert with_store_retries(fetching, 3, lambda _: None) == "done"
    assert retries_counted("registry") == counted_before + 1


@pytest.mark.parametrize(
    "refusal",
    [
        redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
        ReplyParser.parse_error("MISCONF Redis is configured to save RDB snapshots, but it's …"),
    ],
    ids=["replica", "cannot-persist"],
)
def test_a_redis_refusing_writes_for_a_while_is_retried_as_a_redis_that_is_down(refusal):
    calls = []

    def refusing() -> str:
        calls.append(1)
        if len(calls) < 2:
            raise refusal
        return "done"

    assert with_store_retries(refusing, 3, lambda _: None) == "done"
    assert len(calls) == 2


class DriverError(Exception):
    """A driver's error with its SQLSTATE, as psycopg2 gives it."""

    def __init__(self, pgcode: str, message: str) -> None:
        super().__init__(message)
        self.pgcode = pgcode


def test_a_database_refusing_writes_is_retried_and_its_own_faults_are_not():
    """SQLAlchemy raises ``InternalError`` for a write in a read-only transaction (a standby:
    wait for the failover) and for the server's own faults (``XX000``: waiting mends nothing);
    the store tells the first apart as ``DatabaseReadOnly``."""
    standby = sqlalchemy.exc.InternalError(
        "INSERT ...", {}, DriverError("25006", "cannot execute INSERT in a read-only transaction")
    )
    fault = sqlalchemy.exc.InternalError("INSERT ...", {}, DriverError("XX000", "internal"))
    assert isinstance(as_read_only(standby), DatabaseReadOnly)
    assert as_read_only(fault) is fault
    calls = []

    def refusing(error: Exception) -> str:
        calls.append(1)
        if len(calls) < 2:
            raise error
        return "done"

    assert with_store_retries(lambda: refusing(as_read_only(standby)), 3, lambda _: None) == "done"
    calls.clear()
    with pytest.raises(sqlalchemy.exc.InternalError):
        with_store_retries(lambda: refusing(as_read_only(fault)), 3, lambda _: None)
    assert calls == [1]


def test_other_refusals_of_redis_are_not_retried():
    calls = []

    def refused() -> None:
        calls.append(1)
        raise ReplyParser.parse_error("WRONGTYPE Operation against a key holding the wrong kind")

    with pytest.raises(redis.exceptions.ResponseError):
        with_store_retries(refused, 5, lambda _: None)
    assert calls == [1]


def test_other_errors_are_not_retried():
    calls = []

    def bad() -> None:
        calls.append(1)
        raise ValueError("bad input")

    with pytest.raises(ValueError):
        with_store_retries(bad, 5, lambda _: None)
    assert calls == [1]


class Letter:
    """What the dead-letter consumer reads of a kombu message, and how it settled it."""

    headers = {"id": "job-1", "x-death": [{"reason": "rejected", "count": 1}]}
    body = b"[]"
    content_type = "application/json"
    settled: str | None = None

    def ack(self) -> None:
        self.settled = "ack"

    def requeue(self) -> None:
        self.settled = "requeue"


def consume_with(error: Exception) -> str | None:
    """Hand one letter to the dead-letter consumer whose job store raises ``error``."""

    class Jobs:
        def get(self, job_id):
            raise error

    class Found:
        jobs, redis = Jobs(), None

    step = dead_letter_step("q", 2, lambda: Found(), 60)
    letter = Letter()
    step.on_message(cast(Any, None), cast(Any, letter))
    return letter.settled


def test_a_letter_the_database_refuses_for_its_values_does_not_hold_the_queue(monkeypatch):
    """A letter whose values PostgreSQL refused was requeued every second for ever, and every
    later letter waited behind it; an outage is still waited out."""
    monkeypatch.setattr("inference_worker.serving.dead_letters.STORE_RETRY_PAUSE_S", 0)
    refused = sqlalchemy.exc.DataError("INSERT", {}, Exception("integer out of range"))
    down = sqlalchemy.exc.OperationalError("SELECT", {}, Exception("connection refused"))
    assert consume_with(refused) == "ack"
    assert consume_with(down) == "requeue"


def test_an_error_is_told_by_the_first_line_of_the_drivers_own_reason():
    """Operators' messages quote one line: the driver's, not SQLAlchemy's wrapping of it (its
    class, the statement, a link), and the class's name where an error has no text."""
    wrapped = sqlalchemy.exc.OperationalError(
        "SELECT 1", {}, DriverError("08006", "connection to server failed\nIs the server up?")
    )
    assert first_line(wrapped) == "connection to server failed"
    assert first_line(ConnectionRefusedError()) == "ConnectionRefusedError"
    assert first_line(TimeoutError("  \ntimed out after 2 s\n")) == "timed out after 2 s"
