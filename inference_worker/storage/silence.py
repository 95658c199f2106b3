"""A store that stops answering is waited on once in a while, not by every call.

A store that refuses connections fails a call at once; one that stops answering without closing
them (paused, a stalled host, a network that drops its packets) makes each call wait out its
timeout. Under load every shim thread then waits in turn and the shim stops answering anything.
So after a call times out, calls to that store fail at once (saying so) for :data:`QUIET_S`;
then one call tries the store again while the others still fail at once, and its answer closes
or reopens the window. Redis (:mod:`~inference_worker.storage.redis_silence`), PostgreSQL
(:mod:`~inference_worker.storage.database_silence`) and RabbitMQ (``tasks.broker_silence``) each
have one window a server a process (:func:`window_for`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

QUIET_S = 5.0
"""How long after a call timed out the calls to its store fail without asking it."""
TRIAL_S = 10.0
"""How long the call that tries again may take (the store's timeouts fit in it) before another
may try."""


class StoreSilent(Exception):
    """A call refused without asking the store: it did not answer a moment ago."""


class SilenceWindow:
    """The window of one store (its calls in one process: threads share it)."""

    def __init__(
        self, store: str, quiet_s: float = QUIET_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.store, self.quiet_s, self.clock = store, quiet_s, clock
        self.silent_since = 0.0
        self.closed_until = 0.0  # 0: calls go to the store

    def admit(self) -> bool:
        """Let a call go to the store: ``True`` when it is the one that tries again after a
        window, ``False`` for an ordinary call.

        Raises:
            StoreSilent: the store did not answer less than :attr:`quiet_s` ago (or the call
                trying again has not finished).
        """
        if not self.closed_until:
            return False
        now = self.clock()
        self.refuse_while_closed(now)
        self.closed_until = now + TRIAL_S  # the others fail at once meanwhile
        return True

    def refuse_while_closed(self, now: float | None = None) -> None:
        """What :meth:`admit` refuses, asked without taking the trial: before a call that
        :meth:`admit` itself (a connection, before its socket is even opened).

        Raises:
            StoreSilent: the window is closed.
        """
        now = self.clock() if now is None else now
        if self.closed_until and now < self.closed_until:
            raise StoreSilent(
                f"{self.store} did not answer {now - self.silent_since:.1f} s ago; it is asked "
                f"again {self.quiet_s:g} s after that"
            )

    def went_silent(self) -> None:
        """A call timed out: calls fail at once for :attr:`quiet_s`."""
        self.silent_since = self.clock()
        self.closed_until = self.silent_since + self.quiet_s

    def answered(self, trial: bool) -> None:
        """A call got an answer (a refusal too): after a trial, calls go to the store again."""
        if trial:
            self.closed_until = 0.0


_WINDOWS: dict[tuple[str, object], SilenceWindow] = {}


def window_for(store: str, server: object) -> SilenceWindow:
    """The process's window of one server of ``store`` (its URL, or host, port and database):
    every client of it in the process learns from the same silence."""
    return _WINDOWS.setdefault((store, server), SilenceWindow(store))
