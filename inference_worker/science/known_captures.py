"""Captures of transmitters at known positions: the deployment's own yardstick for its ellipses.

The simulator cannot know a deployment's world (its shadowing, its emitters, its receivers'
quirks), so a model's ellipses are calibrated best on captures from that world whose true
positions are known: a repeater, a beacon, a car with a GPS logger. Such a set is a CSV file:

    file,sample_rate_hz,frequency_mhz,lat,lon[,receivers]
    captures/0001.npy,12000,145.5,45.071,7.652,rx-a;rx-b;rx-c

one row per capture; ``file`` is a ``.npy`` array as submitted to the service (complex64,
``(3, n_samples)``), relative to the CSV's folder; ``receivers`` (optional) names its rows in
order, ``;``-separated (default: the model's order). Rows are checked as the service checks a
submission, and every error names its line.

Each capture goes through the service's own maths (features in the model's receiver order,
inference, output decoding); what comes out is the squared Mahalanobis distance of the truth
under each estimate, from which :mod:`inference_worker.science.calibration` fits the scale.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from inference_worker.core.capture import (
    CaptureError,
    CaptureLimits,
    decode_npy,
    validate_iq,
)
from inference_worker.core.contract import ModelMetadata, model_input
from inference_worker.core.ellipse import (
    EstimateError,
    decode_output,
    distance_m,
    mahalanobis_squared,
)

COLUMNS = ("file", "sample_rate_hz", "frequency_mhz", "lat", "lon")
"""Required columns of a known-captures CSV (``receivers`` is optional)."""
FEW_CAPTURES = 200
"""Below this many captures a coverage is measured no better than about ±1.5 points (95 %) to
±3.3 points (68 %): the fitted scale is then a rough one."""


class KnownCapturesError(ValueError):
    """A known-captures file that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class KnownCapture:
    file: Path
    sample_rate_hz: float
    frequency_mhz: float
    lat: float
    lon: float
    receivers: tuple[str, ...] | None
    line: int


class Model(Protocol):
    metadata: ModelMetadata

    def predict(self, features: np.ndarray) -> np.ndarray: ...


def _number(text: str | None, name: str, where: str) -> float:
    if text is None:  # csv gives None to the columns a short row lacks
        raise KnownCapturesError(f"{where}: {name} is missing (the row has too few fields)")
    try:
        value = float(text)
    except ValueError:
        raise KnownCapturesError(f"{where}: {name} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise KnownCapturesError(f"{where}: {name} must be finite")
    return value


def load_known_captures(path: Path) -> list[KnownCapture]:
    """Read and check a known-captures CSV (see the module docstring); the files must exist."""
    if not path.is_file():
        raise KnownCapturesError(f"{path}: no such file")
    try:
        return _read_known_captures(path)
    except UnicodeDecodeError as exc:
        raise KnownCapturesError(f"{path}: not a UTF-8 text file ({exc.reason})") from None
    except csv.Error as exc:  # e.g. a field past the csv module's size limit
        raise KnownCapturesError(f"{path}: not a readable CSV file ({exc})") from None


def _read_known_captures(path: Path) -> list[KnownCapture]:
    # utf-8-sig: a spreadsheet's export may start with a byte-order mark
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise KnownCapturesError(
                f"{path}: missing column(s) {', '.join(missing)}; expected "
                f"{','.join(COLUMNS)}[,receivers]"
            )
        captures = []
        for row in reader:
            where = f"{path}:{reader.line_num}"
            file = path.parent / (row["file"] or "").strip()
            if not row["file"] or not file.is_file():
                raise KnownCapturesError(f"{where}: capture file {row['file']!r} not found")
            rate = _number(row["sample_rate_hz"], "sample_rate_hz", where)
            frequency = _number(row["frequency_mhz"], "frequency_mhz", where)
            lat = _number(row["lat"], "lat", where)
            lon = _number(row["lon"], "lon", where)
            if rate <= 0 or frequency <= 0:
                raise KnownCapturesError(f"{where}: sample rate and frequency must be positive")
            if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
                raise KnownCapturesError(f"{where}: position ({lat}, {lon}) is not on Earth")
            names = (row.get("receivers") or "").strip()
            receivers = tuple(n.strip() for n in names.split(";")) if names else None
            captures.append(
                KnownCapture(file, rate, frequency, lat, lon, receivers, reader.line_num)
            )
    if not captures:
        raise KnownCapturesError(f"{path}: no captures listed")
    return captures


def write_known_captures(
    directory: Path,
    captures: Iterable[tuple[np.ndarray, float, float, float, float, Sequence[str]]],
) -> Path:
    """Write captures ``(iq, sample rate, frequency, lat, lon, receivers)`` as ``.npy`` files
    and their CSV (``captures.csv``) into ``directory``; returns the CSV's path."""
    (directory / "captures").mkdir(parents=True, exist_ok=True)
    path = directory / "captures.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*COLUMNS, "receivers"])
        for index, (iq, rate, frequency, lat, lon, receivers) in enumerate(captures):
            name = f"captures/{index:05d}.npy"
            np.save(directory / name, np.ascontiguousarray(iq, dtype=np.complex64))
            writer.writerow(
                [
                    name,
                    f"{rate:.10g}",
                    f"{frequency:.10g}",
                    f"{lat:.6f}",
                    f"{lon:.6f}",
                    ";".join(receivers),
                ]
            )
    return path


@dataclass(frozen=True)
class Distances:
    d2: np.ndarray
    """Squared Mahalanobis distance of each truth under its estimate (the model's scale)."""
    error_km: np.ndarray
    out_of_domain: np.ndarray
    """Whether each capture's quality block says it is out of the model's domain."""
    outside_evidence: np.ndarray
    """The Bayes factor each capture's ``outside_region`` caution reads (NaN where nothing is
    heard or the model records no domain)."""
    outside_m: np.ndarray
    """How far each capture's transmitter lies outside the domain's region (0 inside; all 0
    without a domain)."""


def squared_distances(
    model: Model,
    captures: Sequence[KnownCapture],
    progress: Callable[[int, int, float], None] | None = None,
) -> Distances:
    """Run every capture through the model as the service does; raise on the first capture the
    service would refuse (naming its line)."""
    metadata = model.metadata
    limits = CaptureLimits()
    d2, errors, outside, evidence, beyond = [], [], [], [], []
    domain = metadata.domain
    started = time.monotonic()
    for index, capture in enumerate(captures):
        where = f"line {capture.line} ({capture.file.name})"
        try:
            iq = validate_iq(decode_npy(capture.file.read_bytes()), limits)
            features, quality = model_input(
                iq,
                capture.sample_rate_hz,
                capture.receivers or metadata.receiver_ids,
                metadata,
                capture.frequency_mhz,
            )
            estimate = decode_output(model.predict(features[None])[0], metadata.outputs)
        except (CaptureError, EstimateError, ValueError) as exc:
            raise KnownCapturesError(f"{where}: {exc}") from None
        d2.append(mahalanobis_squared(estimate, capture.lat, capture.lon))
        errors.append(distance_m(estimate.lat, estimate.lon, capture.lat, capture.lon) / 1e3)
        outside.append(quality["in_domain"] is False)
        factor = quality.get("outside_evidence")  # absent without a domain, None when unheard
        evidence.append(np.nan if factor is None else factor)
        beyond.append(0.0 if domain is None else domain.outside_m(capture.lat, capture.lon))
        if progress is not None and ((index + 1) % 100 == 0 or index + 1 == len(captures)):
            progress(index + 1, len(captures), time.monotonic() - started)
    return Distances(
        np.asarray(d2),
        np.asarray(errors),
        np.asarray(outside),
        np.asarray(evidence, dtype=float),
        np.asarray(beyond, dtype=float),
    )
