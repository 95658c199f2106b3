"""Checks of the settings beyond one field's type: the bounds shared by several, the checks
across settings, and those of the URLs and names the service's clients read. A value the
services would take and then fail on, or silently not honour, is refused when the settings load.

Each rule across settings takes the settings (:class:`~inference_worker.settings.Settings`, not
imported: it imports this module) and returns the reason a combination is refused, or ``None``;
the settings raise it, and the command line prints it naming the variables.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from inference_worker.urls import postgresql_url

YEAR_S = 365 * 86_400
"""The longest lifetime in Redis, or age of a job, a setting gives in seconds: Redis's expiries
and PostgreSQL's dates stop well short of what a float or an integer holds, and no deployment
means a longer one."""

RETENTION_DAYS_MAX = 36_500
"""The longest retention, in days (a century; PostgreSQL's dates reach back to 4713 BC)."""

POSTGRESQL_TIMEOUT_MAX_S = 2_147_483.647
"""PostgreSQL's ``statement_timeout`` is a 32-bit count of milliseconds (~24.8 days): a larger one
makes every connection fail."""

PROCESSES_MAX = 256
"""The most processes of one kind a host starts (a typo of a few more digits forked without end)."""

THREADS_MAX = 1_024
"""The most threads of one kind a process starts."""

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


ALIAS_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What MLflow takes as an alias (ASCII here), no longer than a job's model reference."""
RESERVED_ALIAS = re.compile(r"latest|v[0-9]+", re.IGNORECASE)
"""Names MLflow keeps for itself: the newest version, and a version by number."""
QUEUE_BYTES_MAX = 255 - len(".dead")
"""RabbitMQ's longest queue name, less its dead-letter queue's suffix."""
REGISTRY_SCHEMES = ("sqlite", "postgresql", "http", "https", "databricks", "databricks-uc")
"""The registry stores this service's MLflow client reaches: MLflow 3 no longer takes a folder
(its file store), and no other database driver is installed."""


def alias_refusal(alias: str) -> str | None:
    """Why ``alias`` cannot name a registry version, or ``None``."""
    if not ALIAS_PATTERN.fullmatch(alias) or alias.isdigit():
        return f"alias {alias!r}: an alias is 1-64 of A-Z a-z 0-9 _ - (not a number)"
    if RESERVED_ALIAS.fullmatch(alias):
        return f"alias {alias!r} is reserved by the registry (latest, v<number>)"
    return None


def checked(field: str, value: str) -> str:
    """A text setting the service's clients can use, or a ValueError saying why (each was a
    traceback, or a failure later, in the process that first used it):

    - ``api_public_url``: empty, or an http(s) URL with a host (its last ``/`` cut);
    - ``redis_url``: as redis-py reads it (``redis://``, ``rediss://``, ``unix://``);
    - ``broker_url``: RabbitMQ's, as kombu reads it (``amqp://`` or ``amqps://``);
    - ``registry_uri``: empty (the embedded SQLite registry) or a store of
      :data:`REGISTRY_SCHEMES` (a PostgreSQL URL in the installed driver's form);
    - ``queue``: a name RabbitMQ takes, with its dead-letter queue's;
    - ``model_name`` and ``model_alias``: names the MLflow registry takes;
    - ``database_url``: PostgreSQL's, in SQLAlchemy's form with the installed driver;
    - ``redis_prefix``: ending with ``:`` (added where it does not).
    """
    return _CHECKS[field](value)


def _redis_url(value: str) -> str:
    from redis.connection import parse_url

    parse_url(value)
    parts = urlsplit(value)
    database = parts.path.strip("/")
    if parts.scheme != "unix" and database and not database.isdigit():  # redis-py reads it as 0
        raise ValueError(f"the database {database!r} is no number (redis://host:6379/0)")
    return value


def _broker_url(value: str) -> str:
    from kombu.utils.url import url_to_parts

    if url_to_parts(value).scheme not in ("amqp", "amqps", "pyamqp"):
        raise ValueError("must be a RabbitMQ URL (amqp://user:password@host:5672/vhost)")
    return value


def _registry_uri(value: str) -> str:
    value = postgresql_url(value, driver_required=False)
    scheme = value.split("://", 1)[0].split("+", 1)[0] if "://" in value else value
    if value and scheme not in REGISTRY_SCHEMES:
        raise ValueError(
            "must be empty (an embedded SQLite registry in HEIMDALL_DATA_DIR), sqlite:///path, "
            "postgresql://..., an MLflow server's http(s)://... or databricks"
        )
    return value


def _queue(value: str) -> str:
    if not value or len(value.encode()) > QUEUE_BYTES_MAX:
        raise ValueError(f"a queue name is 1-{QUEUE_BYTES_MAX} bytes (RabbitMQ's 255 less .dead)")
    if value.startswith("amq."):
        raise ValueError("names starting with amq. are RabbitMQ's own")
    return value


def _model_name(value: str) -> str:
    if not value or "/" in value or ":" in value:
        raise ValueError("a registered model's name is not empty and holds no / or :")
    return value


def _model_alias(value: str) -> str:
    if (refusal := alias_refusal(value)) is not None:
        raise ValueError(refusal)
    return value


def _public_url(value: str) -> str:
    parts = urlsplit(value)
    if value and (parts.scheme not in ("http", "https") or not parts.hostname):
        raise ValueError(f"{value!r} is not an http:// or https:// URL with a host")
    return value.rstrip("/")


_CHECKS: dict[str, Callable[[str], str]] = {  # CHECKED, below, names its keys
    "api_public_url": _public_url,
    "redis_url": _redis_url,
    "broker_url": _broker_url,
    "registry_uri": _registry_uri,
    "queue": _queue,
    "model_name": _model_name,
    "model_alias": _model_alias,
    "database_url": partial(postgresql_url, driver_required=True),
    "redis_prefix": lambda value: value if value.endswith(":") else value + ":",
}

CHECKED = tuple(_CHECKS)
"""The settings :func:`checked` checks."""
