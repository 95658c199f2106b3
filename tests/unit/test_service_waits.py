"""How a process waits at start for services that do not answer (pure logic: the probes are
replaced; ``tests/integration/test_start_wait.py`` waits for a real silent Redis)."""

from __future__ import annotations

import pytest

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
