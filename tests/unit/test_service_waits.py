"""How a process waits at start for services that do not answer (pure logic: the probes are
replaced; ``tests/integration/test_start_wait.py`` waits for a real silent Redis)."""

from __future__ import annotations

import kombu.exceptions
import pytest
import sqlalchemy.exc

from inference_worker.cli import bootstrap
from inference_worker.settings import load_settings
from inference_worker.storage import reachability


def scripted(monkeypatch, rounds: list[dict[str, str]]) -> list[list[str]]:
    """Probes answering ``rounds`` in turn (name -> why, for those that do not answer); the
    names each round asked about."""
    asked: list[list[str]] = []

    def unreachable(settings, names=reachability.SERVICES):
        asked.append(list(names))
        return {name: why for name, why in rounds[len(asked) - 1].items() if name in names}

    monkeypatch.setattr(reachability, "unreachable_services", unreachable)
    monkeypatch.setattr("time.sleep", lambda _s: None)
    return asked


def test_each_service_need_answer_once_not_all_at_the_same_moment(monkeypatch, capsys):
    asked = scripted(
        monkeypatch,
        [
            {"Redis": "Redis is not reachable: timeout", "PostgreSQL": "PostgreSQL: refused"},
            {"PostgreSQL": "PostgreSQL: refused"},
            {},
        ],
    )
    bootstrap.require_services(load_settings(), wait_s=60)
    assert asked == [["RabbitMQ", "Redis", "PostgreSQL"], ["Redis", "PostgreSQL"], ["PostgreSQL"]]
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("waiting up to ") and lines[0].endswith(
        " s more: Redis is not reachable: timeout"
    )
    assert lines[1].endswith(" s more: PostgreSQL: refused")
    assert lines[2:] == ["Redis answers now", "PostgreSQL answers now"]


def test_without_a_wait_a_service_that_does_not_answer_ends_the_start_at_once(monkeypatch, capsys):
    asked = scripted(monkeypatch, [{"RabbitMQ": "RabbitMQ at amqp://h is not reachable: refused"}])
    with pytest.raises(SystemExit) as exited:
        bootstrap.require_services(load_settings(), wait_s=0)
    assert exited.value.code == 2 and len(asked) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: RabbitMQ at amqp://h is not reachable: refused\n")
    assert "waiting" not in err and "HEIMDALL_START_WAIT_S" not in err


def test_a_store_that_stops_answering_during_a_step_is_waited_for_and_the_step_run_again(
    monkeypatch, capsys
):
    """It answered the probe and went silent a moment later: the start ended in a traceback."""
    scripted(monkeypatch, [{}])
    calls = []

    def migrate_database(settings) -> None:
        calls.append(settings.database_schema)
        if len(calls) == 1:
            silent = Exception("PostgreSQL answered nothing in 3 s (connecting)\nmore")
            raise sqlalchemy.exc.OperationalError("SELECT 1", {}, silent)

    bootstrap.start_up(load_settings(start_wait_s=60), [migrate_database])
    assert len(calls) == 2
    err = capsys.readouterr().err
    assert err.startswith("waiting up to ")
    assert err.endswith(
        " s more: PostgreSQL did not answer (migrate database): PostgreSQL answered nothing in "
        "3 s (connecting)\n"
    )


def test_a_store_silent_for_several_tries_of_a_step_is_told_once_every_ten_seconds(
    monkeypatch, capsys
):
    """The service's own window after a silence refuses each try for 5 s with a new age
    ("did not answer 1.0 s ago", "2.0 s ago"...): a line a try filled the log."""
    scripted(monkeypatch, [{}])
    tries = []

    def declare_queues(settings) -> None:
        tries.append(1)
        if len(tries) < 6:
            raise kombu.exceptions.OperationalError(f"did not answer {len(tries)}.0 s ago")

    bootstrap.start_up(load_settings(start_wait_s=60), [declare_queues])
    assert len(tries) == 6
    assert capsys.readouterr().err.count("waiting up to") == 1


def test_past_the_wait_a_store_that_stops_answering_during_a_step_ends_the_start_in_a_line(
    monkeypatch, capsys
):
    scripted(monkeypatch, [{}])

    def declare_queues(settings) -> None:
        raise kombu.exceptions.OperationalError("timed out")

    with pytest.raises(SystemExit) as exited:
        bootstrap.start_up(load_settings(start_wait_s=0), [declare_queues])
    assert exited.value.code == 2
    assert capsys.readouterr().err == "error: RabbitMQ did not answer (declare queues): timed out\n"


def test_an_error_that_waiting_does_not_mend_is_not_waited_for(monkeypatch):
    scripted(monkeypatch, [{}])
    calls = []

    def check_model(settings) -> None:
        calls.append(1)
        raise ValueError("a fault of the step's own")

    with pytest.raises(ValueError):
        bootstrap.start_up(load_settings(start_wait_s=60), [check_model])
    assert calls == [1]


def test_a_service_that_refuses_ends_the_start_at_once_saying_what_to_change(monkeypatch, capsys):
    refusal = reachability.Refused(
        "Redis at redis://u:***@h/0 refused: WRONGPASS (check the user and password in "
        "HEIMDALL_REDIS_URL)"
    )
    asked = scripted(monkeypatch, [{"Redis": refusal}])
    with pytest.raises(SystemExit) as exited:
        bootstrap.require_services(load_settings(), wait_s=60)
    assert exited.value.code == 2 and len(asked) == 1
    assert capsys.readouterr().err == f"error: {refusal}\n"


def test_a_refusal_beside_a_silence_ends_the_start_at_once_naming_both(monkeypatch, capsys):
    asked = scripted(
        monkeypatch,
        [
            {
                "RabbitMQ": reachability.Refused("RabbitMQ at amqp://h refused: ACCESS_REFUSED"),
                "PostgreSQL": "PostgreSQL at postgresql://h is not reachable: timeout",
            }
        ],
    )
    with pytest.raises(SystemExit):
        bootstrap.require_services(load_settings(), wait_s=60)
    err = capsys.readouterr().err
    assert len(asked) == 1 and "waiting" not in err and "waited" not in err
    assert "error: RabbitMQ at amqp://h refused: ACCESS_REFUSED\n" in err
    assert "error: PostgreSQL at postgresql://h is not reachable: timeout\n" in err


def test_a_store_that_refuses_a_step_ends_the_start_at_once(monkeypatch, capsys):
    """The services answered the probe; the password changed before the migration."""
    import redis.exceptions

    scripted(monkeypatch, [{}])
    calls = []

    def migrate_database(settings) -> None:
        calls.append(1)
        raise redis.exceptions.AuthenticationError("invalid username-password pair")

    with pytest.raises(SystemExit) as exited:
        bootstrap.start_up(load_settings(start_wait_s=60), [migrate_database])
    assert exited.value.code == 2 and calls == [1]
    assert capsys.readouterr().err == (
        "error: Redis refused (migrate database): invalid username-password pair (check the "
        "user and password in HEIMDALL_REDIS_URL)\n"
    )
