"""Waiting for jobs (:class:`FinishedJobs`) ends for a process shutting down: waits in progress
end when released, later ones at once, each saying whether its job is final; a process holds
at most its bound of waits at once, and declines the next."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from inference_worker.storage.notifications import FinishedJobs, WaitDeclined


class QuietPubSub:
    """A subscription on which nothing is ever announced."""

    def subscribe(self, channel: str) -> None:
        pass

    def get_message(self, timeout: float) -> None:
        time.sleep(timeout)

    def close(self) -> None:
        pass


class QuietStore:
    class client:  # noqa: N801 - the attribute a RedisStore has
        @staticmethod
        def pubsub(**_: Any) -> QuietPubSub:
            return QuietPubSub()

    @staticmethod
    def done_channel() -> str:
        return "done"


def waiting(finished: FinishedJobs, count: int, timeout_s: float) -> tuple[list, list[bool]]:
    """``count`` threads waiting for a job that never finishes, started and given time to
    wait; and the list their waits' results go to."""
    results: list[bool] = []
    waiters = [
        threading.Thread(
            target=lambda: results.append(finished.wait("held", timeout_s, lambda: False))
        )
        for _ in range(count)
    ]
    for waiter in waiters:
        waiter.start()
    time.sleep(0.3)
    return waiters, results


def test_release_ends_waits_in_progress_and_later_ones():
    finished = FinishedJobs(QuietStore())  # type: ignore[arg-type]
    waiters, results = waiting(finished, 3, 60)
    finished.release()
    for waiter in waiters:
        waiter.join(timeout=10)
        assert not waiter.is_alive(), "a wait outlasted the release"
    assert results == [False, False, False]  # released, not announced
    assert finished.wait("b", 60, lambda: True) is True  # a final job is still said final
    assert finished.wait("c", 60, lambda: False) is False
    finished.close()


def test_waits_beyond_the_bound_are_declined_and_a_slot_freed_is_taken_again():
    finished = FinishedJobs(QuietStore(), most_waits=2)  # type: ignore[arg-type]
    waiters, results = waiting(finished, 2, 1.5)
    with pytest.raises(WaitDeclined):  # two held already: the third is not waited for
        finished.wait("third", 60, lambda: False)
    for waiter in waiters:  # both time out, freeing their slots
        waiter.join(timeout=10)
    assert results == [False, False]
    assert finished.wait("again", 60, lambda: True) is True  # a freed slot is taken again
    finished.close()


def test_no_waits_allowed_declines_every_one():
    finished = FinishedJobs(QuietStore(), most_waits=0)  # type: ignore[arg-type]
    with pytest.raises(WaitDeclined):
        finished.wait("a", 60, lambda: True)


def test_a_wait_whose_client_went_away_ends_and_frees_its_place():
    finished = FinishedJobs(QuietStore(), most_waits=1)  # type: ignore[arg-type]
    gone = threading.Event()
    results: list[bool] = []
    waiter = threading.Thread(
        target=lambda: results.append(finished.wait("a", 60, lambda: False, gone.is_set))
    )
    waiter.start()
    time.sleep(0.3)
    with pytest.raises(WaitDeclined):  # its one place is held
        finished.wait("b", 60, lambda: False)
    gone.set()
    waiter.join(timeout=10)  # within a check or two, not after its 60 s
    assert not waiter.is_alive() and results == [False]
    assert finished.wait("b", 60, lambda: True) is True
    finished.close()
