"""Checks of the settings beyond one field's type: the bounds shared by several, the checks
across settings and those of a URL. A value the services would take and then fail on, or
silently not honour, is refused when the settings load.

Each rule across settings takes the settings (:class:`~inference_worker.settings.Settings`, not
imported: it imports this module) and returns the reason a combination is refused, or ``None``;
the settings raise it, and the command line prints it naming the variables.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

YEAR_S = 365 * 86_400
"""The longest lifetime in Redis, or age of a job, a setting gives in seconds: Redis's expiries
and PostgreSQL's dates stop well short of what a float or an integer holds, and no deployment
means a longer one."""

RETENTION_DAYS_MAX = 36_500
"""The longest retention, in days (a century; PostgreSQL's dates reach back ~4 700 years)."""

POSTGRESQL_TIMEOUT_MAX_S = 2_147_483.647
"""PostgreSQL's ``statement_timeout`` is a 32-bit count of milliseconds (~24.8 days): a larger one
makes every connection fail."""

WAIT_MAX_S = 86_400.0
"""The longest a thread waits between two rounds of its work, or for one confirm: far below what
a thread's timed wait takes (``threading.TIMEOUT_MAX``, ~292 years here)."""


def distinct_keys(s: Any) -> str | None:
    names = [k.name for k in s.api_keys]
    digests = [k.digest for k in s.api_keys]
    if len(set(names)) != len(names) or len(set(digests)) != len(digests):
        return "HEIMDALL_API_KEYS: key names and keys must be distinct"
    return None


def hard_limit_above_soft(s: Any) -> str | None:
    if s.task_soft_time_limit_s and s.task_time_limit_s <= s.task_soft_time_limit_s:
        return "HEIMDALL_TASK_TIME_LIMIT_S must be above HEIMDALL_TASK_SOFT_TIME_LIMIT_S"
    return None


def grace_within_blob_lifetime(s: Any) -> str | None:
    """The relay publishes an interrupted submission's task after the grace; by then its capture
    must still be in Redis, or the job is failed instead."""
    if s.outbox_grace_s >= s.blob_ttl_s:
        return (
            f"HEIMDALL_OUTBOX_GRACE_S ({s.outbox_grace_s:g}) must be below HEIMDALL_BLOB_TTL_S "
            f"({s.blob_ttl_s}): an interrupted submission's capture would be gone from Redis "
            "when a worker publishes its task, and the job failed"
        )
    return None


def rate_bounds_in_order(s: Any) -> str | None:
    if s.min_sample_rate_hz > s.max_sample_rate_hz:
        return (
            f"HEIMDALL_MIN_SAMPLE_RATE_HZ ({s.min_sample_rate_hz:g}) is above "
            f"HEIMDALL_MAX_SAMPLE_RATE_HZ ({s.max_sample_rate_hz:g}): no capture would be accepted"
        )
    return None


RULES = (distinct_keys, hard_limit_above_soft, grace_within_blob_lifetime, rate_bounds_in_order)


def service_url(field: str, value: str) -> str:
    """A URL the service's clients can read, or a ValueError saying why (a port that is no
    number was a traceback when a process started):

    - ``api_public_url``: empty, or an http(s) URL with a host (its last ``/`` cut);
    - ``redis_url``: as redis-py reads it (``redis://``, ``rediss://``, ``unix://``);
    - ``broker_url``: RabbitMQ's, as kombu reads it (``amqp://`` or ``amqps://``).
    """
    if field == "redis_url":
        from redis.connection import parse_url

        parse_url(value)
        return value
    if field == "broker_url":
        from kombu.utils.url import url_to_parts

        if url_to_parts(value).scheme not in ("amqp", "amqps", "pyamqp"):
            raise ValueError("must be a RabbitMQ URL (amqp://user:password@host:5672/vhost)")
        return value
    parts = urlsplit(value)
    if value and (parts.scheme not in ("http", "https") or not parts.hostname):
        raise ValueError(f"{value!r} is not an http:// or https:// URL with a host")
    return value.rstrip("/")
