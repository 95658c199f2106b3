"""The JSON message of an inference task (claim check: the IQ bytes wait in Redis)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

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
