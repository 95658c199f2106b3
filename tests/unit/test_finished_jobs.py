"""Waiting for jobs (:class:`FinishedJobs`) ends for a process shutting down: waits in progress
end when released, later ones at once, each saying whether its job is final."""

from __future__ import annotations

import threading
import time
from typing import Any

from inference_worker.storage.notifications import FinishedJobs


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


def test_release_ends_waits_in_progress_and_later_ones():
    finished = FinishedJobs(QuietStore())  # type: ignore[arg-type]
    results: list[bool] = []
    waiters = [
        threading.Thread(target=lambda: results.append(finished.wait("a", 60, lambda: False)))
        for _ in range(3)
    ]
    for waiter in waiters:
        waiter.start()
    time.sleep(0.3)
    finished.release()
    for waiter in waiters:
        waiter.join(timeout=10)
        assert not waiter.is_alive(), "a wait outlasted the release"
    assert results == [False, False, False]  # released, not announced
    assert finished.wait("b", 60, lambda: True) is True  # a final job is still said final
    assert finished.wait("c", 60, lambda: False) is False
    finished.close()
