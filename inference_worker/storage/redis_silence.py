"""A Redis that stops answering is waited on once in a while, not by every call.

A Redis that refuses connections fails a call at once; one that stops answering without closing
them (paused, a stalled host, a network that drops its packets) makes each call wait out the
socket timeout (5 s). Under load every shim thread then waits in turn — on a cache read that
PostgreSQL could answer, a health check, a rate limit — and the shim stops answering anything.
So after a call times out, the client's calls fail at once (the same ``TimeoutError``, saying
so) for :data:`QUIET_S`; then one call tries Redis again while the others still fail at once,
and its answer closes or reopens the window.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

T = TypeVar("T")

QUIET_S = 5.0
"""How long after a call timed out the client's calls fail without asking Redis."""
TRIAL_S = 10.0
"""How long the call that tries again may take (the socket and connect timeouts fit in it)
before another may try."""


class SilenceBreaker(Retry):
    """redis-py's retry policy for every connection of one client: no retries (as redis-py's
    own default for a connection), and the window above. Connections copy their policy; this
    one is shared by all of them (a copy is itself)."""

    def __init__(self, quiet_s: float = QUIET_S, clock: Callable[[], float] = time.monotonic):
        super().__init__(NoBackoff(), 0)
        self.quiet_s, self.clock = quiet_s, clock
        self.silent_since = 0.0
        self.closed_until = 0.0  # 0: calls go to Redis

    def __deepcopy__(self, memo: dict[int, Any]) -> SilenceBreaker:
        return self

    def call_with_retry(
        self, do: Callable[[], T], fail: Callable[..., Any], *more: Any, **also: Any
    ) -> T:
        trial = False
        if self.closed_until:
            now = self.clock()
            if now < self.closed_until:
                raise redis.exceptions.TimeoutError(
                    f"Redis did not answer {now - self.silent_since:.1f} s ago; it is asked "
                    f"again {self.quiet_s:g} s after that"
                )
            self.closed_until, trial = now + TRIAL_S, True  # the others fail at once meanwhile
        try:
            result = super().call_with_retry(do, fail, *more, **also)
        except redis.exceptions.TimeoutError:
            self.silent_since = self.clock()
            self.closed_until = self.silent_since + self.quiet_s
            raise
        except BaseException:
            if trial:  # Redis answered (with a refusal): calls go to it again
                self.closed_until = 0.0
            raise
        if trial:
            self.closed_until = 0.0
        return result


_BY_URL: dict[str, SilenceBreaker] = {}


def breaker_for(redis_url: str) -> SilenceBreaker:
    """The process's breaker for the Redis at ``redis_url``: every client of it (the job store,
    the rate limits) learns from the same silence, so a request that meets both waits once."""
    return _BY_URL.setdefault(redis_url, SilenceBreaker())
