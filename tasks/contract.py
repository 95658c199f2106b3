"""The JSON message of an inference task (claim check: the IQ bytes wait in Redis)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from inference_worker.core.capture import (
    JOB_ID_PATTERN,
    MAX_FREQUENCY_MHZ,
    RECEIVER_ID_PATTERN,
    time_in_range,
)
from inference_worker.core.tdoa_kinds import Expectation, Propagation
from inference_worker.storage.statuses import FINAL_STATUSES

TASK_NAME = "heimdall.locate"
MESSAGE_VERSION = 1


class Station(BaseModel):
    """Where a receiver of a TDoA capture stands."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    height_m: float | None = Field(default=None, ge=-500, le=10_000)
    """Metres above the ellipsoid, bounded as the shim bounds it (not used by the solver)."""


class LocateMessage(BaseModel):
    """Body of a ``heimdall.locate`` task, passed as its single positional argument.

    The capture is not in the message: it is stored in Redis under ``blob_key`` and
    ``iq_sha256`` is the sha256 of what is stored. For ``method="model"`` that is the
    little-endian complex64 bytes of a C-order ``(3, n_samples)`` array, rows in the order of
    ``receivers``; for ``method="tdoa"`` it is one KiwiSDR IQ WAV file per receiver, one after
    another, of the byte lengths in ``parts``, in the order of ``stations``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: int = Field(MESSAGE_VERSION, ge=1, le=MESSAGE_VERSION)
    # Every text has a pattern without NUL (PostgreSQL cannot store it; pydantic refuses text
    # that is not UTF-8 itself): a value the job's row cannot hold would fail its every write.
    job_id: str = Field(pattern=JOB_ID_PATTERN.pattern)
    blob_key: str = Field(max_length=512, pattern=r"^[^\x00]+$")
    n_samples: int = Field(gt=0, le=2**31 - 1)  # the job table's integer column
    sample_rate_hz: float = Field(gt=0, allow_inf_nan=False)
    frequency_mhz: float = Field(gt=0, le=MAX_FREQUENCY_MHZ)
    receivers: tuple[Annotated[str, Field(pattern=RECEIVER_ID_PATTERN.pattern)], ...] = Field(
        min_length=3
    )
    capture_time: datetime
    iq_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    submitted_at: datetime | None = None
    """When the producer accepted the capture (the worker records the job then if no row exists)."""
    batch_id: str | None = Field(None, pattern=JOB_ID_PATTERN.pattern)
    model: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]{1,64}$")
    """A registry version number or alias to use instead of the champion/challenger split."""
    tenant: str | None = Field(None, pattern=r"^[A-Za-z0-9._:-]{1,64}$")
    """The tenant the job belongs to (only API keys of that tenant read it)."""
    method: Literal["model", "tdoa"] = "model"
    """``model``: the served ONNX model on received power; ``tdoa``: time differences of
    arrival from GPS-stamped recordings."""
    stations: tuple[Station, ...] | None = None
    """The receivers' positions (``tdoa`` only), in the order of ``receivers``."""
    parts: tuple[Annotated[int, Field(gt=0)], ...] | None = None
    """Byte length of each receiver's file in the stored blob (``tdoa`` only)."""
    expect_emitter: Expectation = "anywhere"
    """Where the emitter is expected (``tdoa`` only): ``among_receivers`` makes the one place
    among the receivers the estimate when the delays leave several. Left out of the message
    when ``anywhere``, so that workers of releases before it read the message."""
    propagation: Propagation = "ground"
    """How the signal reached the receivers (``tdoa`` only): ``skywave`` locates with paths off
    an ionospheric layer. Left out of the message when ``ground``, as ``expect_emitter``."""

    def to_json(self) -> dict[str, Any]:
        """The message as sent: a model capture's is what releases before TDoA sent, so that
        workers of either release read it."""
        left_out = {"method", "stations", "parts"} if self.method == "model" else set()
        if self.expect_emitter == "anywhere":
            left_out.add("expect_emitter")
        if self.propagation == "ground":
            left_out.add("propagation")
        return self.model_dump(mode="json", exclude=left_out)

    @field_validator("capture_time", "submitted_at")
    @classmethod
    def _readable_time(cls, moment: datetime | None, info: pydantic.ValidationInfo) -> Any:
        """A time the stores can give back (a naive one is taken as UTC, as the shim does)."""
        return None if moment is None else time_in_range(str(info.field_name), moment)

    @model_validator(mode="after")
    def _fits_its_method(self) -> LocateMessage:
        if self.method == "model":
            if len(self.receivers) != 3:
                raise ValueError("a model capture names exactly 3 receivers")
            if self.stations is not None or self.parts is not None:
                raise ValueError("stations and parts belong to tdoa captures")
            if self.expect_emitter != "anywhere" or self.propagation != "ground":
                raise ValueError("expect_emitter and propagation belong to tdoa captures")
            return self
        count = len(self.receivers)
        if self.stations is None or self.parts is None:
            raise ValueError("a tdoa capture needs stations and parts")
        if [s.id for s in self.stations] != list(self.receivers) or len(self.parts) != count:
            raise ValueError("stations and parts must follow receivers, one each")
        if self.model is not None:
            raise ValueError("a tdoa capture uses no model")
        return self


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
        raise MessageError(f"invalid task message: {invalid_fields(exc)}") from None


def invalid_fields(exc: pydantic.ValidationError) -> str:
    """What a validation error says, one ``field: reason`` a field."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}" for e in exc.errors()
    )


class JobWaitTimeout(TimeoutError):
    """A wait for a job ran out before the job was final; the job goes on (``job_id``)."""

    def __init__(self, job_id: str, message: str) -> None:
        super().__init__(message)
        self.job_id = job_id


class JobWaitInterrupted(KeyboardInterrupt):
    """Ctrl-C while waiting for a job: the wait ends, the job goes on (``job_id``)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id


def wait_until_final(
    fetch: Callable[[], dict[str, Any] | None], job_id: str, timeout_s: float, interval_s: float
) -> dict[str, Any]:
    """Call ``fetch`` until it returns a job in a final status (clients poll with this).

    Raises:
        JobWaitTimeout: the job is not final within ``timeout_s`` (a ``TimeoutError``).
        JobWaitInterrupted: Ctrl-C while waiting (a ``KeyboardInterrupt``).
    """
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            view = fetch()
            if view is not None and view["status"] in FINAL_STATUSES:
                return view
            if time.monotonic() > deadline:
                status = view["status"] if view else "not finished"
                raise JobWaitTimeout(job_id, f"job {job_id} still {status} after {timeout_s:g} s")
            time.sleep(interval_s)
    except KeyboardInterrupt as exc:
        if isinstance(exc, JobWaitInterrupted):  # a wait within this one's fetch
            raise
        raise JobWaitInterrupted(job_id) from None
