"""A TDoA submission checked before it is accepted: one KiwiSDR IQ WAV file per receiver, the
receivers' positions, the tuned frequency.

Every refusal is a :class:`~inference_worker.core.capture.CaptureError` whose text names the
receiver and says what is wrong: no usable GPS time, too short a common span, frequencies that
do not match, one recording sent for two receivers (the same file, or pieces of it), files
named for other receivers of the set (sent in another order), positions that are not positions
or fewer than three places.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import numpy as np

from inference_worker.core.capture import (
    MAX_FREQUENCY_MHZ,
    RECEIVER_ID_PATTERN,
    CaptureError,
    parse_capture_time,
    parse_json,
    parse_number,
    time_in_range,
)
from inference_worker.core.contract import Receiver
from inference_worker.core.kiwi_names import parse_file_name
from inference_worker.core.kiwi_wav import KiwiWavError, read_kiwi_wav, timebase
from inference_worker.core.recording_sets import (
    arrived_s,
    block_prints,
    overlap,
    repeated_recording,
    shown_s,
    too_few_sites,
    too_short,
)
from inference_worker.core.tdoa_kinds import EXPECTATIONS, PROPAGATIONS, Expectation, Propagation

FREQUENCY_TOLERANCE_HZ = 500.0
"""How far the tuned frequency in a file's name may be from the submission's."""


@dataclass(frozen=True)
class TdoaLimits:
    max_receivers: int = 12
    min_overlap_s: float = 2.0


@dataclass(frozen=True)
class TdoaCapture:
    """A checked TDoA submission: the files as sent, in the order of ``stations``."""

    files: tuple[bytes, ...]
    stations: tuple[Receiver, ...]
    heights_m: tuple[float | None, ...]
    frequency_mhz: float
    capture_time: datetime
    n_samples: int
    """Samples of the longest recording."""
    sample_rate_hz: float
    """The rate the files' headers claim (the true rates come from the GPS stamps)."""
    overlap_s: float
    expect_emitter: Expectation = "anywhere"
    propagation: Propagation = "ground"
    """Where the emitter is expected (:data:`~inference_worker.core.tdoa_search.Expectation`)."""

    def payload(self) -> bytes:
        """What is stored for the worker: the files one after another."""
        return b"".join(self.files)

    def parts(self) -> tuple[int, ...]:
        return tuple(len(f) for f in self.files)

    def digest(self) -> str:
        return hashlib.sha256(self.payload()).hexdigest()


def parse_stations(value: object, limits: TdoaLimits) -> tuple[list[Receiver], list[float | None]]:
    """``receivers``: a JSON list (or its text) of ``{"id", "lat", "lon", "height_m"?}``."""
    if isinstance(value, str | bytes):
        try:
            value = parse_json(value)
        except ValueError:
            raise CaptureError("receivers must be a JSON list of {id, lat, lon}") from None
    if not isinstance(value, list):
        raise CaptureError("receivers must be a JSON list of {id, lat, lon}")
    if not 3 <= len(value) <= limits.max_receivers:
        raise CaptureError(
            f"time differences need 3 to {limits.max_receivers} receivers; got {len(value)}"
        )
    stations, heights = [], []
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise CaptureError(f"receivers[{index}] must be an object {{id, lat, lon}}")
        name = item.get("id")
        if not isinstance(name, str) or not RECEIVER_ID_PATTERN.match(name):
            raise CaptureError(
                f"receivers[{index}].id must be 1-64 letters, digits, '.', '_' or '-'"
            )
        lat = _coordinate(f"receivers[{index}].lat", item.get("lat"), 90.0)
        lon = _coordinate(f"receivers[{index}].lon", item.get("lon"), 180.0)
        height = item.get("height_m")
        if height is not None:
            height = parse_number(f"receivers[{index}].height_m", height, low=-500, high=10_000)
        stations.append(Receiver(name, lat, lon))
        heights.append(height)
    if len({s.id for s in stations}) != len(stations):
        raise CaptureError("receivers must have different ids")
    problem = too_few_sites(stations)
    if problem:
        raise CaptureError(problem)
    return stations, heights


def _coordinate(name: str, value: object, bound: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CaptureError(f"{name} must be a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise CaptureError(f"{name} must be a number")
    if not -bound <= value <= bound:  # exact for an integer past float's range too
        raise CaptureError(f"{name} must be between -{bound:g} and {bound:g}")
    return float(value)


def parse_expectation(value: object) -> Expectation:
    """``expect_emitter``: ``anywhere`` (when absent or empty) or ``among_receivers``."""
    return cast(Expectation, _one_of("expect_emitter", value, EXPECTATIONS))


def parse_propagation(value: object) -> Propagation:
    """``propagation``: ``ground`` (when absent or empty) or ``skywave``."""
    return cast(Propagation, _one_of("propagation", value, PROPAGATIONS))


def _one_of(name: str, value: object, choices: Sequence[str]) -> str:
    """A field ``value`` that must be one of ``choices``: the first when absent or empty."""
    if value is None or value == "":
        return choices[0]
    if isinstance(value, str) and value in choices:
        return value
    raise CaptureError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def check_tdoa(
    files: Sequence[bytes],
    names: Sequence[str],
    fields: Mapping[str, Any],
    limits: TdoaLimits,
) -> TdoaCapture:
    """Check one TDoA submission: its positions, and that every file holds GPS-timed IQ that
    overlaps the others' for long enough, at the submission's frequency.

    Raises:
        CaptureError: what is wrong, naming the receiver.
    """
    stations, heights = parse_stations(fields.get("receivers"), limits)
    if len(files) != len(stations):
        raise CaptureError(
            f"{len(files)} capture file(s) for {len(stations)} receivers: send one file part "
            "named 'capture' per receiver, in the order of 'receivers'"
        )
    problem = out_of_order([s.id for s in stations], names)
    if problem:
        raise CaptureError(problem)
    frequency_mhz = parse_number(
        "frequency_mhz", fields.get("frequency_mhz"), low=0.001, high=MAX_FREQUENCY_MHZ
    )
    expectation = parse_expectation(fields.get("expect_emitter"))
    propagation = parse_propagation(fields.get("propagation"))
    bases, lengths, rates, named, prints = [], [], [], [], []
    for data, name, station in zip(files, names, stations, strict=True):
        label = f"receiver {station.id}" + (f" ({name})" if name else "")
        tuned = parse_file_name(name or "")
        if tuned and abs(tuned.frequency_hz - frequency_mhz * 1e6) > FREQUENCY_TOLERANCE_HZ:
            raise CaptureError(
                f"{label} was tuned to {tuned.frequency_hz / 1e3:g} kHz, not the "
                f"{frequency_mhz * 1e3:g} kHz of this submission: every recording must be of "
                "the same frequency"
            )
        try:
            recording = read_kiwi_wav(data)
            bases.append(timebase(recording))
        except KiwiWavError as exc:
            raise CaptureError(f"{label}: {exc}") from None
        lengths.append(len(recording.iq))
        rates.append(recording.header_rate_hz)
        prints.append(block_prints(recording))
        if tuned:
            named.append((label, tuned.start, len(recording.iq) / recording.header_rate_hz))
    problem = repeated_recording(stations, prints) or apart_in_time(named)
    if problem:
        raise CaptureError(problem)
    start, end = overlap(bases)
    problem = too_short(start, end, limits.min_overlap_s)
    if problem:
        raise CaptureError(problem)
    arrived = arrived_s(bases)
    if arrived < limits.min_overlap_s:
        raise CaptureError(
            f"the recordings' blocks that arrived overlap for {shown_s(arrived)} "
            f"s of GPS time (blocks were lost on the way); at least {limits.min_overlap_s:g} s "
            "are needed"
        )
    if max(rates) > 1.01 * min(rates):  # 12 000 and 12 001 both occur in real headers
        raise CaptureError(
            f"the recordings' sample rates differ: {sorted(rates)} Hz (record every receiver "
            "in the same IQ mode)"
        )
    return TdoaCapture(
        files=tuple(files),
        stations=tuple(stations),
        heights_m=tuple(heights),
        frequency_mhz=frequency_mhz,
        capture_time=_capture_time(fields.get("capture_time"), named),
        n_samples=max(lengths),
        sample_rate_hz=float(np.median(rates)),
        overlap_s=end - start,
        expect_emitter=expectation,
        propagation=propagation,
    )


def out_of_order(ids: Sequence[str], names: Sequence[str]) -> str | None:
    """Why files and receivers are not in the same order, or None: a kiwirecorder file name
    carries its station, and one sent for a receiver is named for another of the submission's
    receivers (compared regardless of case). Its position would be another receiver's: with
    three receivers the delays still fit, and the estimate is confidently wrong."""
    known = {identity.casefold(): identity for identity in ids}
    for identity, name in zip(ids, names, strict=True):
        parsed = parse_file_name(name or "")
        station = parsed.station.casefold() if parsed and parsed.station else None
        if station is not None and station != identity.casefold() and station in known:
            return (
                f"the file sent for receiver {identity} ({name}) is named for receiver "
                f"{known[station]}: send one file per receiver in the order of 'receivers'"
            )
    return None


CLOCK_SLACK_S = 300.0
"""How far a kiwirecorder file name's start (the recording computer's clock, not GPS time) may
be off for recordings that overlap in GPS time."""


def apart_in_time(named: Sequence[tuple[str, datetime, float]]) -> str | None:
    """Why recordings cannot have been made together, or None: of ``(label, start, seconds)``
    from their kiwirecorder file names, one starts after another has ended (by more than
    :data:`CLOCK_SLACK_S`). A KiwiSDR's GPS stamps give the time within the GPS week only, so
    recordings a week apart at the same hour would otherwise seem simultaneous."""
    in_order = sorted(named, key=lambda one: one[1])
    for (first, begun, length), (then, later, _) in itertools.combinations(in_order, 2):
        if (later - begun).total_seconds() > length + CLOCK_SLACK_S:
            return (
                f"{first} and {then} were recorded at different times by their file names "
                f"({begun:%Y-%m-%d %H:%M:%S} and {later:%Y-%m-%d %H:%M:%S} UTC): a KiwiSDR's GPS "
                "stamps give the time within the week only, so recordings made apart could "
                "seem simultaneous; send recordings made at the same time"
            )
    return None


def _capture_time(value: object, named: Sequence[tuple[str, datetime, float]]) -> datetime:
    """The submission's ``capture_time``; left out, the earliest start the file names give
    (kiwirecorder's names carry it), else now."""
    if value not in (None, "") or not named:
        return parse_capture_time(value)
    earliest = min(start for _, start, _ in named)
    try:
        return time_in_range("capture_time", earliest)
    except ValueError:
        return parse_capture_time(None)  # a name's date no clock could mean: now, as unnamed
