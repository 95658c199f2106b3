"""A Redis that stops answering is waited on once in a while, not by every call
(:mod:`~inference_worker.storage.silence`): after a call times out (the socket timeout, 5 s),
the client's calls fail at once with the same ``TimeoutError``, saying so.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from inference_worker.storage.silence import QUIET_S, SilenceWindow, StoreSilent, window_for

T = TypeVar("T")


class SilenceBreaker(Retry):
    """redis-py's retry policy for every connection of one client: no retries (as redis-py's
    own default for a connection), and the window of the Redis. Connections copy their policy;
    this one is shared by all of them (a copy is itself).

    redis-py calls its policy again within a call — to connect, to check a new or long idle
    connection's health — and those inner calls are the outer call's: they pass without the
    window. Refused as others, they failed the very call that tried Redis again after a
    silence, so a process with no live connection left (all dropped at their timeouts, or new:
    a worker process forked meanwhile) never reached Redis again."""

    def __init__(
        self,
        quiet_s: float = QUIET_S,
        clock: Callable[[], float] = time.monotonic,
        window: SilenceWindow | None = None,
    ):
        super().__init__(NoBackoff(), 0)
        self.window = window or SilenceWindow("Redis", quiet_s, clock)
        self._calling = threading.local()

    def __deepcopy__(self, memo: dict[int, Any]) -> SilenceBreaker:
        return self

    def call_with_retry(
        self, do: Callable[[], T], fail: Callable[..., Any], *more: Any, **also: Any
    ) -> T:
        if getattr(self._calling, "now", False):  # within a call of this thread: its part
            return super().call_with_retry(do, fail, *more, **also)
        try:
            trial = self.window.admit()
        except StoreSilent as exc:
            raise redis.exceptions.TimeoutError(str(exc)) from None
        self._calling.now = True
        try:
            result = super().call_with_retry(do, fail, *more, **also)
        except redis.exceptions.TimeoutError:
            self.window.went_silent()
            raise
        except BaseException:
            self.window.answered(trial)  # a refusal is an answer
            raise
        finally:
            self._calling.now = False
        self.window.answered(trial)
        return result


_BY_URL: dict[str, SilenceBreaker] = {}


def breaker_for(redis_url: str) -> SilenceBreaker:
    """The process's breaker for the Redis at ``redis_url``: every client of it (the job store,
    the rate limits) learns from the same silence, so a request that meets both waits once."""
    if redis_url not in _BY_URL:
        _BY_URL[redis_url] = SilenceBreaker(window=window_for("Redis", redis_url))
    return _BY_URL[redis_url]


def ping_within(client: redis.Redis, seconds: float) -> None:
    """PING the Redis of ``client``, waiting ``seconds`` at most for its answer (a health
    check's limit, shorter than the socket timeout), through the client's window as its other
    calls: within the window it fails at once, and a silence met here opens it."""
    pool = client.connection_pool

    def ask() -> None:
        connection = pool.get_connection()
        try:
            # No health check of its own first: it would wait the socket timeout.
            connection.send_command("PING", check_health=False)
            if not connection.can_read(timeout=seconds):
                connection.disconnect()
                raise redis.exceptions.TimeoutError(f"Redis did not answer PING in {seconds:g} s")
            connection.read_response()
        finally:
            pool.release(connection)

    policy = client.get_retry()
    if isinstance(policy, SilenceBreaker):
        policy.call_with_retry(ask, lambda error: None)
    else:
        ask()
