"""A RabbitMQ that stops answering costs a publish one timeout, and the next publishes none for a
while.

A broker paused or stalled keeps its connections: a publish waits out its confirm timeout, and
kombu's retries then reconnect, each new connection waiting out the connect timeout for a
handshake that never comes (a submission was answered ``503`` after 27 s). A publish now stops
at the first timeout (a refused or reset connection is still retried, as a broker restarting
is), and after it the process's publishes to that broker fail at once for a while
(:mod:`~inference_worker.storage.silence`), then one tries again.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import kombu.exceptions

from inference_worker.storage.silence import StoreSilent, window_for


class BrokerSilent(kombu.exceptions.OperationalError):
    """A publish refused without asking RabbitMQ: it did not answer a moment ago."""


def give_up_when_silent(exc: BaseException, interval: float) -> None:
    """kombu's retry callback (``errback``): a publish or a reconnection that timed out is not
    tried again within this publish; any other error is, as kombu's retry policy says."""
    if isinstance(exc, TimeoutError):
        raise exc


PUBLISH_RETRY_POLICY = {
    # Give a broker that refuses connections ~3 s to come back before a submission is answered
    # with 503; one that does not answer is given one timeout.
    "max_retries": 4,
    "interval_start": 0.1,
    "interval_step": 0.4,
    "interval_max": 1.0,
    "errback": give_up_when_silent,
}


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what it was raised from or while handling, in turn (kombu raises its own
    errors for py-amqp's and the socket's; a chain may loop back on itself)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        yield cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__


def timed_out(exc: BaseException) -> bool:
    """Whether ``exc`` is, or was raised from, a timeout."""
    return any(isinstance(cause, TimeoutError) for cause in causes(exc))


@contextmanager
def publishing_to(broker_url: str) -> Iterator[None]:
    """A publish to ``broker_url``: refused at once while the broker's window is closed; one
    that times out closes it.

    Raises:
        BrokerSilent: the broker did not answer a moment ago.
    """
    window = window_for("RabbitMQ", broker_url)
    try:
        trial = window.admit()
    except StoreSilent as exc:
        raise BrokerSilent(str(exc)) from None
    try:
        yield
    except BaseException as exc:
        if timed_out(exc):
            window.went_silent()
        else:
            window.answered(trial)  # a refusal, a nack, a block: the broker answered
        raise
    window.answered(trial)
