"""A submission that passed every check, and the task message it becomes: the one description a
job row is built from (:func:`build_message`), for model captures and TDoA sets alike."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pydantic

from inference_worker.core.capture import IQ_DTYPE, CaptureError, CaptureLimits, CaptureMeta
from inference_worker.core.contract import ModelSummary
from inference_worker.core.tdoa_capture import TdoaCapture
from inference_worker.settings import Settings
from tasks.contract import LocateMessage, Station, invalid_fields


@dataclass(frozen=True)
class Capture:
    """A submission that passed every check: IQ, metadata, and what the client asked for."""

    iq: np.ndarray
    meta: CaptureMeta
    job_id: str | None
    model: str | None

    def payload(self) -> bytes:
        """What is stored for the worker (its sha256 is the capture's digest)."""
        return np.ascontiguousarray(self.iq, dtype=IQ_DTYPE).tobytes()


@dataclass(frozen=True)
class TdoaJob:
    """A TDoA submission that passed every check, and the job id the client asked for."""

    capture: TdoaCapture
    job_id: str | None
    model: None = None

    def payload(self) -> bytes:
        return self.capture.payload()


def capture_limits(settings: Settings, model: ModelSummary | None) -> CaptureLimits:
    """The bounds a capture must respect: the settings', tightened by the served model's."""
    return CaptureLimits(
        min_samples=model.min_samples if model else CaptureLimits.min_samples,
        max_samples=settings.max_samples_per_receiver,
        min_sample_rate_hz=max(settings.min_sample_rate_hz, model.bandwidth_hz if model else 0.0),
        max_sample_rate_hz=settings.max_sample_rate_hz,
    )


def build_message(
    capture: Capture | TdoaJob,
    *,
    job_id: str,
    digest: str,
    blob_key: str,
    batch_id: str | None,
    tenant: str | None,
) -> LocateMessage:
    """The task message of an accepted capture: the one description its job row is built from.

    Raises:
        CaptureError: a value the contract refuses (a producer's ``batch_id`` or ``tenant``).
    """
    common = {
        "job_id": job_id,
        "blob_key": blob_key,
        "iq_sha256": digest,
        "submitted_at": datetime.now(UTC),
        "batch_id": batch_id,
        "tenant": tenant,
    }
    try:
        return _message(capture, common)
    except pydantic.ValidationError as exc:
        raise CaptureError(invalid_fields(exc)) from None


def _message(capture: Capture | TdoaJob, common: dict[str, Any]) -> LocateMessage:
    if isinstance(capture, TdoaJob):
        tdoa = capture.capture
        return LocateMessage(
            **common,
            n_samples=tdoa.n_samples,
            sample_rate_hz=tdoa.sample_rate_hz,
            frequency_mhz=tdoa.frequency_mhz,
            receivers=tuple(s.id for s in tdoa.stations),
            capture_time=tdoa.capture_time,
            method="tdoa",
            stations=tuple(
                Station(id=s.id, lat=s.lat, lon=s.lon, height_m=h)
                for s, h in zip(tdoa.stations, tdoa.heights_m, strict=True)
            ),
            parts=tdoa.parts(),
            expect_emitter=tdoa.expect_emitter,
            propagation=tdoa.propagation,
        )
    meta = capture.meta
    return LocateMessage(
        **common,
        n_samples=int(capture.iq.shape[1]),
        sample_rate_hz=meta.sample_rate_hz,
        frequency_mhz=meta.frequency_mhz,
        receivers=meta.receivers,  # three, checked by parse_meta
        capture_time=meta.capture_time,
        model=capture.model,
    )
