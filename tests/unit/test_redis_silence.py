"""The window a Redis that stopped answering is left alone for (pure logic: a clock of the
test's own, calls that time out or answer)."""

from __future__ import annotations

import copy
import threading

import pytest
import redis.exceptions

from inference_worker.storage.redis_silence import SilenceBreaker, breaker_for
from inference_worker.storage.silence import TRIAL_S, SilenceWindow, StoreSilent


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def silent() -> None:
    raise redis.exceptions.TimeoutError("Timeout reading from 127.0.0.1:6379")


def test_a_timeout_makes_the_next_calls_fail_at_once_until_the_window_ends():
    clock, asked = Clock(), []
    breaker = SilenceBreaker(quiet_s=5.0, clock=clock)
    with pytest.raises(redis.exceptions.TimeoutError, match="Timeout reading"):
        breaker.call_with_retry(silent, lambda error: None)
    clock.now += 4.9
    with pytest.raises(redis.exceptions.TimeoutError, match=r"did not answer 4\.9 s ago"):
        breaker.call_with_retry(lambda: asked.append(1), lambda error: None)
    assert asked == []  # not asked: the call failed without waiting
    clock.now += 0.2
    assert breaker.call_with_retry(lambda: "answered", lambda error: None) == "answered"
    assert breaker.call_with_retry(lambda: "again", lambda error: None) == "again"


def silenced(clock: Clock) -> SilenceBreaker:
    """A breaker whose last call timed out (a window of 5 s from ``clock.now``)."""
    breaker = SilenceBreaker(quiet_s=5.0, clock=clock)
    with pytest.raises(redis.exceptions.TimeoutError):
        breaker.call_with_retry(silent, lambda error: None)
    return breaker


def test_one_call_tries_again_while_the_others_still_fail_at_once():
    clock = Clock()
    breaker = silenced(clock)
    clock.now += 6.0
    others: list[str] = []

    def trial() -> str:  # while it waits on Redis, another thread's call
        refused: list[str] = []

        def other() -> None:
            try:
                breaker.call_with_retry(lambda: others.append("asked"), lambda error: None)
            except redis.exceptions.TimeoutError as exc:
                refused.append(str(exc))

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        assert len(refused) == 1 and "did not answer" in refused[0]
        raise redis.exceptions.TimeoutError("Timeout reading from 127.0.0.1:6379")

    with pytest.raises(redis.exceptions.TimeoutError, match="Timeout reading"):
        breaker.call_with_retry(trial, lambda error: None)
    assert others == []
    clock.now += 4.0  # the trial's silence opened a new window
    with pytest.raises(redis.exceptions.TimeoutError, match="did not answer"):
        breaker.call_with_retry(lambda: None, lambda error: None)


def test_the_calls_redis_py_makes_within_a_call_are_that_call_s():
    """redis-py connects and checks a connection's health through the same policy, within the
    call: the trial's own inner calls pass, and its answer opens the window."""
    clock = Clock()
    breaker = silenced(clock)
    clock.now += 6.0
    inner: list[str] = []

    def trial() -> str:
        breaker.call_with_retry(lambda: inner.append("connected"), lambda error: None)
        return "answered"

    assert breaker.call_with_retry(trial, lambda error: None) == "answered"
    assert inner == ["connected"]
    assert breaker.call_with_retry(lambda: "open", lambda error: None) == "open"


def test_a_trial_answered_with_a_refusal_closes_the_window_and_a_lost_trial_expires():
    clock = Clock()
    breaker = silenced(clock)
    clock.now += 5.0

    def refused() -> None:
        raise redis.exceptions.ConnectionError("Connection refused")

    with pytest.raises(redis.exceptions.ConnectionError):
        breaker.call_with_retry(refused, lambda error: None)
    assert breaker.call_with_retry(lambda: 1, lambda error: None) == 1
    breaker.window.closed_until = clock.now + TRIAL_S  # a trial whose thread never came back
    clock.now += TRIAL_S
    assert breaker.call_with_retry(lambda: 2, lambda error: None) == 2


def test_connections_share_their_client_s_breaker_and_clients_of_one_redis_share_one():
    breaker = breaker_for("redis://127.0.0.1:1/0")
    assert copy.deepcopy(breaker) is breaker  # redis-py copies each connection's policy
    assert breaker_for("redis://127.0.0.1:1/0") is breaker
    assert breaker_for("redis://127.0.0.1:2/0") is not breaker


def test_a_window_refuses_before_a_call_without_taking_its_trial():
    """A connection is refused before its socket opens while the window is closed; asking so
    does not take the trial that the call itself will take."""
    clock = Clock()
    window = SilenceWindow("PostgreSQL", 5.0, clock)
    window.refuse_while_closed()  # open: nothing to refuse
    window.went_silent()
    clock.now += 4.0
    with pytest.raises(StoreSilent, match=r"did not answer 4\.0 s ago"):
        window.refuse_while_closed()
    clock.now += 2.0
    window.refuse_while_closed()  # due for a trial: let through, the trial not taken
    assert window.admit() is True
