"""The model contract: a model folder's metadata and its integrity check (no onnxruntime).

A model is a folder with ``model.onnx`` and ``model.json`` (its metadata: version, receivers in
channel order, feature parameters, output layout and units, evaluation metrics, sha256 of the
ONNX file). :mod:`inference_worker.serving.onnx_model` runs it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inference_worker.core.capture import CaptureError
from inference_worker.core.domain import Domain, assess, clipped_share
from inference_worker.core.ellipse import DEFAULT_LEVELS, scale_for_confidence
from inference_worker.core.features import FeatureParams, analyse

OUTPUT_LAYOUTS = {
    4: ("lat_deg", "lon_deg", "sigma_east_m", "sigma_north_m"),
    5: ("lat_deg", "lon_deg", "sigma_east_m", "sigma_north_m", "rho"),
}


class ModelError(RuntimeError):
    """The model folder is missing, malformed, or does not match its metadata."""


@dataclass(frozen=True)
class Receiver:
    id: str
    lat: float
    lon: float


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    version: str
    receivers: tuple[Receiver, ...]
    features: FeatureParams
    outputs: tuple[str, ...]
    sha256: str
    architecture: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    domain: Domain | None = None
    """The world the model was trained for; ``None`` for models that do not record it."""
    ellipse_radius_scales: dict[float, float] = field(default_factory=dict)
    """Per result level (0.6827, 0.95), the factor on that ellipse's radii found when the model
    was calibrated level by level; a level without one is drawn from the sigmas alone."""

    @functools.cached_property
    def receiver_ids(self) -> tuple[str, ...]:
        return tuple(r.id for r in self.receivers)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelMetadata:
        try:
            outputs = tuple(data["outputs"]["layout"])
            if outputs not in OUTPUT_LAYOUTS.values():
                raise ModelError(f"unsupported output layout {list(outputs)}")
            return cls(
                name=str(data["name"]),
                version=str(data["version"]),
                receivers=tuple(
                    Receiver(str(r["id"]), float(r["lat"]), float(r["lon"]))
                    for r in data["receivers"]
                ),
                features=FeatureParams.from_metadata(data["features"]),
                outputs=outputs,
                sha256=str(data["sha256"]),
                architecture=str(data.get("architecture", "")),
                metrics=dict(data.get("metrics", {})),
                domain=Domain.from_metadata(data["domain"]) if data.get("domain") else None,
                ellipse_radius_scales=radius_scales(data["outputs"].get("ellipse_radius_scales")),
            )
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
            raise ModelError(f"model metadata is malformed: {exc!r}") from None

    @classmethod
    def load(cls, path: Path) -> ModelMetadata:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ModelError(f"model metadata not found: {path}") from None
        except OSError as exc:  # the folder is a file, or the file a folder or not readable
            raise ModelError(f"model metadata {path} cannot be read: {exc.strerror}") from None
        except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, or nested too deep
            raise ModelError(f"model metadata {path} is not JSON: {exc}") from None
        return cls.from_json(data)


def radius_scales(given: Any) -> dict[float, float]:
    """The ``outputs.ellipse_radius_scales`` of a model's metadata (``{"68": 0.97, "95": 1.02}``:
    result level label to factor) by level; refused unless every label is a result level and
    the ellipses stay nested."""
    if not given:
        return {}
    labels = {f"{round(level * 100)}": level for level in DEFAULT_LEVELS}
    if not isinstance(given, dict) or not set(given) <= set(labels):
        raise ValueError(f"ellipse_radius_scales must map some of {sorted(labels)} to factors")
    scales = {labels[label]: float(factor) for label, factor in given.items()}
    if not all(0.25 <= f <= 4.0 for f in scales.values()):
        raise ValueError(f"ellipse_radius_scales must lie within 0.25..4: {given}")
    radii = [1.0] + [scale_for_confidence(p) * scales.get(p, 1.0) for p in DEFAULT_LEVELS]
    if any(inner >= outer for inner, outer in zip(radii, radii[1:], strict=False)):
        raise ValueError(f"ellipse_radius_scales would not keep the ellipses nested: {given}")
    return scales


_SETTLED_NS = 2_000_000_000
"""A file unchanged this long is taken as settled: the kernel stamps a file's times from a clock
that moves in steps of milliseconds, so one rewritten within a step of being read, at the same
size, could keep the times it was read at."""
_DIGESTS: dict[tuple[int, ...], str] = {}
"""sha256 by a settled file's device, inode, size and times, as this process last read it."""
_DIGESTS_KEPT = 64


def file_sha256(path: Path) -> str:
    """The sha256 of ``path``'s content. Read again only when its device, inode, size or times
    have changed since this process last read it, as git's index does: the model folder is
    checked at each health check and each reload, and a model file is megabytes. A write, a
    copy or a rename over it changes its change time, which no program sets."""
    with path.open("rb") as stream:
        seen = os.fstat(stream.fileno())
        identity = (seen.st_dev, seen.st_ino, seen.st_size, seen.st_mtime_ns, seen.st_ctime_ns)
        if identity in _DIGESTS:
            return _DIGESTS[identity]
        digest = hashlib.sha256()
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
        after = os.fstat(stream.fileno())
    settled = time.time_ns() - max(seen.st_mtime_ns, seen.st_ctime_ns) > _SETTLED_NS
    if settled and (after.st_size, after.st_mtime_ns, after.st_ctime_ns) == identity[2:]:
        if len(_DIGESTS) >= _DIGESTS_KEPT:
            _DIGESTS.clear()  # one call: the shim's threads may be here at once
        _DIGESTS[identity] = digest.hexdigest()
    return digest.hexdigest()


def load_metadata(
    model_dir: Path, *, verify: bool = True, digest: str | None = None
) -> ModelMetadata:
    """Read a model folder's metadata; with ``verify`` also check the ONNX file's sha256
    (``digest``: the file's, where the caller has just read it, so it is not read again)."""
    metadata = ModelMetadata.load(model_dir / "model.json")
    if verify:
        onnx_file = model_dir / "model.onnx"
        if digest is None and not onnx_file.is_file():
            raise ModelError(f"model file not found: {onnx_file}")
        actual = digest or file_sha256(onnx_file)
        if actual != metadata.sha256:
            raise ModelError(
                f"model file {onnx_file} has sha256 {actual}, model.json says {metadata.sha256}"
            )
    return metadata


@dataclass(frozen=True)
class ModelSummary:
    """What a submission is checked against: the served model's receivers and feature minimums.

    Small and JSON-friendly, so that the serving state in Redis carries it to every shim
    process and producer after a reload.
    """

    name: str
    version: str
    sha256: str
    receivers: tuple[Receiver, ...]
    min_samples: int
    bandwidth_hz: float
    follow_carrier_hz: float = 0.0

    @functools.cached_property
    def receiver_ids(self) -> tuple[str, ...]:
        return tuple(r.id for r in self.receivers)

    @classmethod
    def of(cls, metadata: ModelMetadata) -> ModelSummary:
        return cls(
            name=metadata.name,
            version=metadata.version,
            sha256=metadata.sha256,
            receivers=metadata.receivers,
            min_samples=metadata.features.min_samples,
            bandwidth_hz=metadata.features.bandwidth_hz,
            follow_carrier_hz=metadata.features.follow_carrier_hz,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "receivers": [{"id": r.id, "lat": r.lat, "lon": r.lon} for r in self.receivers],
            "min_samples": self.min_samples,
            "bandwidth_hz": self.bandwidth_hz,
            "follow_carrier_hz": self.follow_carrier_hz,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelSummary:
        try:
            return cls(
                name=str(data["name"]),
                version=str(data["version"]),
                sha256=str(data["sha256"]),
                receivers=tuple(
                    Receiver(str(r["id"]), float(r["lat"]), float(r["lon"]))
                    for r in data["receivers"]
                ),
                min_samples=int(data["min_samples"]),
                bandwidth_hz=float(data["bandwidth_hz"]),
                follow_carrier_hz=float(data.get("follow_carrier_hz", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"model summary is malformed: {exc!r}") from None


def channel_order(capture_receivers: Sequence[str], model_receivers: Sequence[str]) -> list[int]:
    """Row indices that put a capture's receivers into the model's receiver order."""
    try:
        return [list(capture_receivers).index(r) for r in model_receivers]
    except ValueError:
        raise CaptureError(
            f"capture receivers {list(capture_receivers)} do not match the model's "
            f"{list(model_receivers)}"
        ) from None


def model_input(
    iq: np.ndarray,
    sample_rate_hz: float,
    receivers: Sequence[str],
    metadata: ModelMetadata,
    frequency_mhz: float | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """A capture's input features for the model (its rows, named by ``receivers``, put in the
    model's receiver order) and its quality block, checked against the model's domain.

    Raises:
        CaptureError: the capture's receivers are not the model's, or its samples are so large
            that their power overflows.
        ValueError: no features can be computed (capture too short, rate below the band).
    """
    order = channel_order(receivers, metadata.receiver_ids)
    if order != sorted(order):  # already in order: no copy of the capture
        iq = iq[order]
    with np.errstate(over="ignore", invalid="ignore"):  # refused below, saying why
        features, band = analyse(iq, sample_rate_hz, metadata.features)
    if not np.isfinite(features).all():  # else the model answers NaN, and the job fails for it
        raise CaptureError(
            "the capture's power overflows single precision (samples of magnitude up to "
            f"{float(np.abs(iq.view(np.float32)).max()):.3g}): IQ is expected in full-scale units, "
            "within about ±1"
        )
    quality = assess(
        features,
        band,
        clipped_share(iq),
        metadata.features,
        metadata.receiver_ids,
        metadata.domain,
        frequency_mhz,
    )
    return features, quality
