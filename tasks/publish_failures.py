"""What a publish that failed tells: why RabbitMQ did not take the task, and whether the task may
have reached it all the same (a submission that may still run is kept, not withdrawn)."""

from __future__ import annotations

import amqp.exceptions

from tasks.alarm import BrokerBlocked
from tasks.app import Unroutable
from tasks.broker_silence import BrokerSilent, causes, timed_out


def describe_broker_refusal(exc: BaseException) -> str:
    """What a client is told when a publish fails: the broker is unreachable, or it nacked the
    message (kombu raises its own error from py-amqp's ``MessageNacked``): a queue at its
    ``max-length`` rejecting publishes, a quorum queue without a majority), or it blocks
    publishing (a memory or disk alarm)."""
    for cause in causes(exc):
        if isinstance(cause, amqp.exceptions.MessageNacked):
            return "the message broker refused the job (its queue may be full)"
        if isinstance(cause, Unroutable):
            return "the message broker has no queue for the job"
        if isinstance(cause, BrokerBlocked):
            return (
                "the message broker refuses new messages while it is low on memory or disk "
                "(a RabbitMQ resource alarm)"
            )
    return "the message broker is unavailable"


UNCONFIRMED = {
    True: "RabbitMQ blocked its task before confirming it (a resource alarm); it runs once the "
    "alarm clears",
    False: "RabbitMQ stopped answering before confirming its task; it runs if the task reached "
    "the broker, or once the relay publishes it again",
}


def may_have_reached(exc: BaseException) -> bool:
    """Whether a publish that failed with ``exc`` may have reached RabbitMQ all the same: it was
    written when the broker blocked publishing, or the broker stopped answering mid-way (a
    confirm, a handshake timed out: what was sent is read when it answers again). A publish
    refused without asking the broker (:class:`~tasks.broker_silence.BrokerSilent`), or that
    the broker answered with a refusal, did not."""
    if isinstance(exc, BrokerBlocked):
        return exc.sent
    return timed_out(exc) and not isinstance(exc, BrokerSilent)
