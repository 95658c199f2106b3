"""Which of a service's answers at connection are refusals, which waiting does not end, told
apart from silences and restarts, which it does (pure: the errors are built, not met;
``tests/integration/test_start_wait.py`` meets the real ones)."""

from __future__ import annotations

import amqp.exceptions
import pytest
import redis.exceptions

from inference_worker.storage.reachability import Refused, refusal_remedy, unanswered


class DriverError(Exception):
    """An error as SQLAlchemy wraps one: the driver's own in ``orig``."""

    def __init__(self, text: str) -> None:
        super().__init__(f"(psycopg2.OperationalError) {text}")
        self.orig = Exception(text)


@pytest.mark.parametrize(
    ("name", "error", "setting"),
    [
        (
            "RabbitMQ",
            amqp.exceptions.AccessRefused("(403) ACCESS_REFUSED - Login was refused"),
            "BROKER",
        ),
        ("RabbitMQ", amqp.exceptions.NotAllowed("(530) NOT_ALLOWED - vhost x not found"), "BROKER"),
        ("Redis", redis.exceptions.AuthenticationError("invalid username-password pair"), "REDIS"),
        ("Redis", redis.exceptions.AuthenticationError("Authentication required."), "REDIS"),
        (
            "Redis",
            redis.exceptions.NoPermissionError("NOPERM this user has no permissions"),
            "REDIS",
        ),
        ("Redis", redis.exceptions.ResponseError("DB index is out of range"), "REDIS"),
        ("PostgreSQL", DriverError('failed: FATAL:  database "x" does not exist'), "DATABASE"),
        ("PostgreSQL", DriverError('failed: FATAL:  role "x" does not exist'), "DATABASE"),
        (
            "PostgreSQL",
            DriverError('FATAL:  password authentication failed for user "x"'),
            "DATABASE",
        ),
        ("PostgreSQL", DriverError("fe_sendauth: no password supplied"), "DATABASE"),
        ("PostgreSQL", DriverError('FATAL:  no pg_hba.conf entry for host "10.0.0.9"'), "DATABASE"),
    ],
)
def test_a_refusal_names_the_setting_to_change(name, error, setting):
    assert f"HEIMDALL_{setting}_URL" in (refusal_remedy(name, error) or "")
    reason = unanswered(name, "amqp://user:secret@host//", error)
    assert isinstance(reason, Refused) and reason.startswith("amqp://user:***@host// refused: ")
    assert "secret" not in reason


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("RabbitMQ", ConnectionRefusedError(111, "Connection refused")),
        ("RabbitMQ", TimeoutError("timed out")),
        ("RabbitMQ", amqp.exceptions.ConnectionForced("(320) CONNECTION_FORCED - shutdown")),
        ("Redis", redis.exceptions.ConnectionError("Error 111 connecting. Connection refused.")),
        ("Redis", redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory")),
        ("Redis", redis.exceptions.TimeoutError("Timeout connecting to server")),
        ("PostgreSQL", DriverError("FATAL:  the database system is starting up")),
        ("PostgreSQL", DriverError("FATAL:  sorry, too many clients already")),
        ("PostgreSQL", DriverError("connection to server failed: Connection refused")),
        ("PostgreSQL", DriverError("")),
    ],
)
def test_a_silence_or_a_restart_is_not_a_refusal(name, error):
    assert refusal_remedy(name, error) is None
    reason = unanswered(name, "redis://host:6379/0", error)
    assert not isinstance(reason, Refused)
    assert reason.startswith("redis://host:6379/0 is not reachable: ")
