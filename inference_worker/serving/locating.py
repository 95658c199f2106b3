"""Locating one capture, from its stored bytes to a result: pure of stores and queues.

The pieces a job runs between fetching its capture and recording its result (checked decoding,
features with the capture's quality, inference, ellipses, and the TDoA estimator), shared by the
single-job path (:mod:`inference_worker.serving.jobs`) and the batches
(:mod:`inference_worker.serving.job_batches`).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Protocol

import numpy as np

from inference_worker.core.capture import IQ_DTYPE, RECEIVER_COUNT, CaptureError, capture_nbytes
from inference_worker.core.contract import ModelMetadata, Receiver, model_input
from inference_worker.core.ellipse import EstimateError, decode_output, describe
from inference_worker.core.features import load_signal_maths
from inference_worker.core.likelihood_map import render_png
from inference_worker.core.tdoa import solve
from inference_worker.core.tdoa_results import describe_solution
from inference_worker.core.time_differences import TdoaError
from tasks.contract import LocateMessage

load_signal_maths()  # in the worker's main process, before its pool forks: the pages are shared


class Predictor(Protocol):
    metadata: ModelMetadata

    @property
    def version(self) -> str: ...

    def predict(self, features: np.ndarray) -> np.ndarray: ...


class BadJob(Exception):
    """The job cannot succeed whatever we retry; the message is the reason recorded."""


def _checked_blob(blob: bytes | None, message: LocateMessage, expected: int) -> bytes:
    """A job's stored capture, checked against the message: present, ``expected`` bytes long,
    and matching its sha256."""
    if blob is None:
        raise BadJob("capture data is missing from Redis (expired or never stored)")
    if len(blob) != expected:
        raise BadJob(f"capture data has {len(blob)} bytes, expected {expected}")
    if hashlib.sha256(blob).hexdigest() != message.iq_sha256:
        raise BadJob("capture data does not match its sha256")
    return blob


def decode_blob(blob: bytes | None, message: LocateMessage) -> np.ndarray:
    """The stored IQ of a job, checked against the message (size and sha256)."""
    expected = capture_nbytes(message.n_samples)
    data = _checked_blob(blob, message, expected)
    iq = np.frombuffer(data, dtype=IQ_DTYPE).reshape(RECEIVER_COUNT, message.n_samples)
    if not np.isfinite(iq.view(np.float32)).all():
        raise BadJob("capture data contains NaN or infinite values")
    return iq


def decode_recordings(blob: bytes | None, message: LocateMessage) -> list[bytes]:
    """The stored WAV files of a TDoA job, checked against the message (sizes and sha256)."""
    parts = message.parts or ()
    data = _checked_blob(blob, message, sum(parts))
    ends = np.cumsum(parts)
    return [data[end - size : end] for end, size in zip(ends, parts, strict=True)]


def locate_tdoa(
    files: list[bytes], message: LocateMessage
) -> tuple[dict[str, Any], dict[str, float], bytes]:
    """Time differences and position of a TDoA job; returns the result, the stage timing and a
    PNG of the likelihood around the estimate."""
    stations = [Receiver(s.id, s.lat, s.lon) for s in message.stations or ()]
    t0 = time.perf_counter()
    try:
        solution = solve(
            files, stations, expect=message.expect_emitter, propagation=message.propagation
        )
    except TdoaError as exc:
        raise BadJob(str(exc)) from None
    t1 = time.perf_counter()
    result = describe_solution(solution, stations, message.frequency_mhz)
    estimate, likelihood = solution.estimate, solution.likelihood
    marks = [(estimate.lat, estimate.lon, "estimate")]
    marks += [(s.lat, s.lon, s.id) for s in stations]
    elsewhere = [
        f"also possible {o['lat']:.4f}, {o['lon']:.4f} (weight {o['weight']:.2f}"
        + (", among the receivers)" if o["among_receivers"] else ")")
        for o in result["alternatives"]
    ]
    picture = render_png(
        likelihood.lats, likelihood.lons, likelihood.log_likelihood, points=marks, notes=elsewhere
    )
    return result, {"tdoa_ms": (t1 - t0) * 1e3}, picture


def tdoa_fit(result: dict[str, Any]) -> str:
    """How a TDoA result's delays fitted: ``plausible``; ``left_out`` (one receiver's delays
    disagreed with the others' and were left out); ``widened`` (they agreed with no one
    position, and their uncertainties were widened to fit); ``unheard`` (plausibly, once
    receivers that heard no signal in common with the others were left out)."""
    causes = {left.get("cause", "disagrees") for left in result.get("excluded", [])}
    if "disagrees" in causes:
        return "left_out"
    if result.get("sigma_scale", 1.0) > 1.0:
        return "widened"
    return "unheard" if causes else "plausible"


def capture_features(
    iq: np.ndarray, message: LocateMessage, metadata: ModelMetadata
) -> tuple[np.ndarray, dict[str, Any]]:
    """The model's input features of one capture, receivers in the model's order, and the
    capture's quality block (checked against the model's domain)."""
    try:
        return model_input(
            iq, message.sample_rate_hz, message.receivers, metadata, message.frequency_mhz
        )
    except CaptureError as exc:
        raise BadJob(str(exc)) from None
    except ValueError as exc:
        raise BadJob(f"cannot compute features: {exc}") from None


def describe_output(
    output: Any, metadata: ModelMetadata, quality: dict[str, Any]
) -> dict[str, Any]:
    """The result of one capture (position, ellipses, quality) from its row of model output."""
    try:
        estimate = decode_output(output, metadata.outputs)
        return {
            **describe(estimate, radius_scales=metadata.ellipse_radius_scales),
            "quality": quality,
        }
    except EstimateError as exc:
        raise BadJob(str(exc)) from None


def locate(
    iq: np.ndarray, message: LocateMessage, model: Predictor
) -> tuple[dict[str, Any], dict[str, float]]:
    """Features, inference and ellipses of one capture; returns the result and stage timings."""
    metadata = model.metadata
    t0 = time.perf_counter()
    features, quality = capture_features(iq, message, metadata)
    t1 = time.perf_counter()
    output = model.predict(features[None])
    t2 = time.perf_counter()
    result = describe_output(output[0], metadata, quality)
    t3 = time.perf_counter()
    timings = {
        "features_ms": (t1 - t0) * 1e3,
        "inference_ms": (t2 - t1) * 1e3,
        "ellipse_ms": (t3 - t2) * 1e3,
    }
    return result, timings
