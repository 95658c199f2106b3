"""The JSON message of an inference task (claim check: the IQ bytes wait in Redis)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from inference_worker.storage.statuses import FINAL_STATUSES

TASK_NAME = "heimdall.locate"
MESSAGE_VERSION = 1


class LocateMessage(BaseModel):
    """Body of a ``heimdall.locate`` task, passed as its single positional argument.

    The IQ samples are not in the message: they are stored in Redis under ``blob_key`` as
    little-endian complex64 bytes of a C-order ``(3, n_samples)`` array, rows in the order of
    ``receivers``, and ``iq_sha256`` is their sha256.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: int = Field(MESSAGE_VERSION, ge=1, le=MESSAGE_VERSION)
    job_id: str = Field(min_length=1, max_length=128)
    blob_key: str = Field(min_length=1, max_length=512)
    n_samples: int = Field(gt=0)
    sample_rate_hz: float = Field(gt=0)
    frequency_mhz: float = Field(gt=0)
    receivers: tuple[str, str, str]
    capture_time: datetime
    iq_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    submitted_at: datetime | None = None
    """When the producer accepted the capture (the worker records the job then if no row exists)."""
    batch_id: str | None = Field(None, max_length=128)
    model: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]{1,64}$")
    """A registry version number or alias to use instead of the champion/challenger split."""
    tenant: str | None = Field(None, pattern=r"^[A-Za-z0-9._:-]{1,64}$")
    """The tenant the job belongs to (only API keys of that tenant read it)."""


def capture_fingerprint(message: LocateMessage) -> str:
    """What makes two captures the same input: IQ bytes, sample rate and receiver order."""
    text = f"{message.iq_sha256}|{message.sample_rate_hz!r}|{','.join(message.receivers)}"
    return hashlib.sha256(text.encode()).hexdigest()


def challenger_share(job_id: str) -> float:
    """A number in [0, 1) fixed by the job id: the same job always lands on the same side of the
    champion/challenger split (``< challenger fraction``: the challenger)."""
    return int(hashlib.sha256(job_id.encode()).hexdigest()[:15], 16) / 16**15


class MessageError(ValueError):
    """A task message that does not follow the contract; the text says what is wrong."""


def read_message(payload: object) -> LocateMessage:
    """The task message in ``payload`` (the task's JSON argument), checked field by field.

    Raises:
        MessageError: ``payload`` is not a valid message; the text names each bad field.
    """
    if not isinstance(payload, dict):
        raise MessageError(f"task message must be a JSON object; got {type(payload).__name__}")
    try:
        return LocateMessage.model_validate(payload)
    except pydantic.ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}" for e in exc.errors()
        )
        raise MessageError(f"invalid task message: {details}") from None


def wait_until_final(
    fetch: Callable[[], dict[str, Any] | None], job_id: str, timeout_s: float, interval_s: float
) -> dict[str, Any]:
    """Call ``fetch`` until it returns a job in a final status (clients poll with this).

    Raises:
        TimeoutError: the job is not final within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        view = fetch()
        if view is not None and view["status"] in FINAL_STATUSES:
            return view
        if time.monotonic() > deadline:
            status = view["status"] if view else "not finished"
            raise TimeoutError(f"job {job_id} still {status} after {timeout_s:g} s")
        time.sleep(interval_s)
