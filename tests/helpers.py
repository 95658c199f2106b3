"""Helpers shared by the unit and the integration tests: bodies and task messages."""

from __future__ import annotations

import base64
import io
import json
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from inference_worker.core.capture import iq_digest
from inference_worker.core.kiwi_wav import BLOCK_SAMPLES, read_kiwi_wav, write_kiwi_wav
from inference_worker.science.kiwi_sets import SyntheticSet, synthetic_set

if TYPE_CHECKING:  # the registry's modules load MLflow: only the tests that use it pay
    from inference_worker.serving.registry import ModelRegistry


def npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    """``array`` as the body of an ``application/x-npy`` request."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def npy_with_header(header: bytes) -> bytes:
    """A version 1.0 ``.npy`` body with this header text, however broken (padded as numpy pads
    it), and 48 bytes of data."""
    padded = header + b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(padded).to_bytes(2, "little") + padded + b"\0" * 48


def capture_query(capture, **extra: object) -> dict[str, Any]:
    """The query string of an npy submission of ``capture``."""
    return {
        "sample_rate_hz": capture.sample_rate_hz,
        "frequency_mhz": capture.frequency_mhz,
        "receivers": ",".join(capture.receivers),
        **extra,
    }


def capture_fields(capture) -> dict[str, Any]:
    """The metadata of ``capture`` as the Python client's submissions take it."""
    return {
        "sample_rate_hz": capture.sample_rate_hz,
        "frequency_mhz": capture.frequency_mhz,
        "receivers": list(capture.receivers),
    }


def json_body(capture, **extra: object) -> dict[str, Any]:
    """A JSON submission of ``capture`` (IQ in base64)."""
    return {
        "iq_data": base64.b64encode(capture.iq.tobytes()).decode(),
        "sample_rate_hz": capture.sample_rate_hz,
        "frequency_mhz": capture.frequency_mhz,
        "receivers": list(capture.receivers),
        **extra,
    }


def task_message(iq: np.ndarray, job_id: str, blob_key: str, **changes: object) -> dict[str, Any]:
    """The JSON task message a producer sends for a 12 kHz capture of ``iq`` (override fields
    with ``changes``)."""
    message: dict[str, Any] = {
        "job_id": job_id,
        "blob_key": blob_key,
        "n_samples": int(iq.shape[1]),
        "sample_rate_hz": 12_000.0,
        "frequency_mhz": 145.5,
        "receivers": ["torino", "montanaro", "giaveno"],
        "capture_time": datetime.now(UTC).isoformat(),
        "iq_sha256": iq_digest(iq),
    }
    return {**message, **changes}


def capture_message(capture, job_id: str, blob_key: str, **changes: object) -> dict[str, Any]:
    """The task message of a simulated ``capture``."""
    return task_message(
        capture.iq,
        job_id,
        blob_key,
        sample_rate_hz=capture.sample_rate_hz,
        frequency_mhz=capture.frequency_mhz,
        receivers=list(capture.receivers),
        **changes,
    )


def embedded_registry(folder: Path) -> ModelRegistry:
    """A registry of a test's own: an embedded MLflow store, its artifacts and this host's
    copies all in ``folder``."""
    from inference_worker.serving.registry import ModelRegistry

    return ModelRegistry(
        f"sqlite:///{folder / 'mlflow.db'}",
        name="heimdall-test",
        cache_dir=folder / "cache",
        artifact_location=(folder / "artifacts").as_uri(),
    )


def piece_of(data: bytes, first_block: int, blocks: int) -> bytes:
    """Blocks of a KiwiSDR recording as a file of their own, stamped as they were (one recording
    cut in pieces)."""
    recording = read_kiwi_wav(data)
    start = int(recording.block_start[first_block])
    samples = recording.iq[start : start + blocks * BLOCK_SAMPLES]
    stamps = recording.gps_s[first_block : first_block + blocks]
    return write_kiwi_wav(samples, stamps, fix_age=recording.fix_age[first_block:])


def heard_by_skywave(spread_m: float = 0.0) -> SyntheticSet:
    """Four receivers at 10 MHz over 6 s hearing the emitter by one hop off a layer 300 km high,
    each path's reflection up to ``spread_m`` higher or lower."""
    return synthetic_set(
        np.random.default_rng(5),
        receivers=4,
        seconds=6.0,
        quirks=False,
        frequency_hz=10_000_000,
        layer_height_m=300e3,
        layer_spread_m=spread_m,
    )


def edited_copy(model_dir: Path, copy: Path, edit: Callable[[dict[str, Any]], object]) -> Path:
    """A copy of a model folder at ``copy`` with its ``model.json`` changed in place by
    ``edit`` (a hand-edited model)."""
    shutil.copytree(model_dir, copy)
    metadata = json.loads((copy / "model.json").read_text())
    edit(metadata)
    (copy / "model.json").write_text(json.dumps(metadata))
    return copy
