"""Time differences of arrival between GPS-stamped recordings: pure numpy.

Every receiver's samples are put on GPS time through its own fitted time base
(:func:`inference_worker.core.kiwi_wav.timebase`), and only the span all receivers cover is used.
Each pair is cross-correlated over short windows, each window's peak refined below a sample (band-
limited interpolation, then a parabola); windows grossly off a pair's median are dropped, and the
rest give the pairs' delays and the covariance of their errors.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import overload

import numpy as np

from inference_worker.core.contract import Receiver
from inference_worker.core.correlation_peaks import arrived
from inference_worker.core.frequency_offsets import (
    COARSE_HZ,
    DRIFT_HZ,
    FINE_HZ,
    MAX_OFFSET_HZ,
    SEARCH_WINDOWS,
    frequency_offsets,
    receiver_drifts,
)
from inference_worker.core.geodesy import SPEED_OF_LIGHT_M_S, great_circle_m
from inference_worker.core.kiwi_wav import KiwiRecording, Timebase
from inference_worker.core.recording_sets import TdoaError, overlap, too_few_sites, too_short
from inference_worker.core.window_correlations import KnownWindows, WindowCorrelations, WindowLayout

OUTLIER_MADS = 5.0
"""A window whose delay is this many robust standard deviations from the pair's median is an
outlier."""
INCOHERENT_SHARE = 0.15
INCOHERENT_RATIO = 30.0
"""A pair has no common signal when its windows' delays scatter over more than
``INCOHERENT_SHARE`` of the lags searched (unrelated signals scatter over most of them), or
more than ``INCOHERENT_RATIO`` times as much as the pair that agrees best."""
WINDOW_S = 0.25
"""How long each window correlated is. Against 0.5 s, on the README's evaluation rows, the
median errors fell in five of six (162 -> 156 m on the main sets, 548 -> 451 over 5 s,
78 -> 66 with 12 receivers; 127 -> 144 with 8 over 12 s), and twelve receivers' regions, wider
than needed with 66 pairs and about 50 windows, came nearer their levels (68 %: 88.3 -> 78.3,
95 %: 100 -> 96.7 %): twice as many windows estimate the delays' scatter from twice as many
samples. A receiver off the others' frequency keeps ``|sinc(Δf · window)|`` of its correlation
before it is turned back."""
FEWEST_WINDOWS = 8
"""A common span too short for this many windows of the length asked is cut into this many
shorter ones: how the windows' delays scatter is the delays' uncertainty, and from three
windows (a 2 s span in 0.5 s windows) that scatter is a guess (95 % regions held 70 % of such
sets)."""
CLOCK_FLOOR_S = 0.3e-6
"""Timing error of a receiver that its stamps' scatter does not show (GPS receiver bias, the
interpolation onto GPS time): added to every receiver's time-base uncertainty."""


class DeafReceivers(TdoaError):
    """Receivers in no pair that hears a common signal (``receivers``: their indices): a
    receiver whose time or frequency is off, or that does not hear the emitter."""

    def __init__(self, message: str, receivers: Sequence[int]) -> None:
        super().__init__(message)
        self.receivers = tuple(receivers)


@dataclass(frozen=True)
class PairDelay:
    a: int
    b: int
    delay_s: float
    """Arrival at ``a`` minus arrival at ``b``."""
    sigma_s: float
    windows_used: int
    windows_total: int


class Delays(Sequence[PairDelay]):
    """Every pair's delay, and the covariance of their errors (pairs share receivers and
    windows, so their errors are not independent). ``precision``: the covariance's inverse
    where it is already known and of full rank (:meth:`without` passes it on)."""

    def __init__(
        self,
        pairs: list[PairDelay],
        covariance_us2: np.ndarray,
        *,
        precision: np.ndarray | None = None,
        offsets_hz: np.ndarray | None = None,
    ) -> None:
        self.pairs = pairs
        self.offsets_hz = offsets_hz
        """Each receiver's frequency offset (Hz) from the others' that its windows were turned
        back by before correlating (:mod:`~inference_worker.core.frequency_offsets`); None:
        not known (delays made by hand)."""
        self.covariance_us2 = covariance_us2.view()
        """``(pairs, pairs)``, in µs²; read-only, as the precision taken from it is kept."""
        self.covariance_us2.flags.writeable = False
        self._precision = precision
        self._rank = len(pairs) if precision is not None else None

    def __len__(self) -> int:
        return len(self.pairs)

    @overload
    def __getitem__(self, index: int) -> PairDelay: ...

    @overload
    def __getitem__(self, index: slice) -> list[PairDelay]: ...

    def __getitem__(self, index: int | slice) -> PairDelay | list[PairDelay]:
        return self.pairs[index]

    def precision(self) -> np.ndarray:
        """The inverse covariance (µs⁻²), for ``r @ P @ r``: its pseudo-inverse, taken once
        (read-only; with 2 016 pairs an inversion takes a second)."""
        if self._precision is None:
            values, vectors = np.linalg.eigh(self.covariance_us2)
            kept = np.abs(values) > 1e-10 * float(np.abs(values).max(initial=0.0))
            precision = (vectors[:, kept] / values[kept]) @ vectors[:, kept].T
            precision.flags.writeable = False
            self._precision, self._rank = precision, int(np.count_nonzero(kept))
        return self._precision

    def rank(self) -> int:
        """The covariance's rank: how many of the pairs' errors are independent."""
        self.precision()
        assert self._rank is not None
        return self._rank

    def renumbered(self, numbers: Sequence[int], receivers: int) -> Delays:
        """These delays, found among some of ``receivers`` (``numbers``: each one's index among
        all), numbered among all; the others' frequency offsets unknown (NaN)."""
        pairs = [replace(p, a=numbers[p.a], b=numbers[p.b]) for p in self.pairs]
        offsets = None
        if self.offsets_hz is not None:
            offsets = np.full(receivers, np.nan)
            offsets[list(numbers)] = self.offsets_hz
        whole = self._precision if self._rank == len(self.pairs) else None  # see __init__
        return Delays(pairs, self.covariance_us2, precision=whole, offsets_hz=offsets)

    def with_receiver_spread(self, sigma_s: float, receivers: int) -> Delays:
        """These delays with each of ``receivers`` receivers' time uncertain by ``sigma_s``
        more, moving all its pairs alike (a skywave path's length); the pairs' sigmas kept."""
        design = pair_design([(p.a, p.b) for p in self.pairs], receivers)
        extra = (sigma_s * 1e6) ** 2 * (design @ design.T)
        return Delays(self.pairs, self.covariance_us2 + extra, offsets_hz=self.offsets_hz)

    def without(self, receiver: int) -> Delays:
        """The pairs that do not involve ``receiver``, the receivers after it numbered one
        lower (as in the list of stations without it).

        Where the precision is known and of full rank, the remaining pairs' is had from it
        without a new inversion (a block of an inverse: ``W_kk - W_kd W_dd⁻¹ W_dk`` for the
        kept and dropped pairs): leaving each of 64 receivers out in turn would otherwise
        invert 64 matrices of 1 953 pairs."""
        rows = [row for row, pair in enumerate(self.pairs) if receiver not in (pair.a, pair.b)]
        pairs = [
            replace(
                self.pairs[row],
                a=self.pairs[row].a - (self.pairs[row].a > receiver),
                b=self.pairs[row].b - (self.pairs[row].b > receiver),
            )
            for row in rows
        ]
        precision = None
        if self._precision is not None and self._rank == len(self.pairs):
            dropped = sorted(set(range(len(self.pairs))) - set(rows))
            whole = self._precision
            across = whole[np.ix_(rows, dropped)]
            precision = whole[np.ix_(rows, rows)] - across @ np.linalg.solve(
                whole[np.ix_(dropped, dropped)], across.T
            )
            precision = (precision + precision.T) / 2
            precision.flags.writeable = False
        offsets = None if self.offsets_hz is None else np.delete(self.offsets_hz, receiver)
        return Delays(
            pairs,
            self.covariance_us2[np.ix_(rows, rows)],
            precision=precision,
            offsets_hz=offsets,
        )


def pair_delays(
    recordings: Sequence[KiwiRecording],
    timebases: Sequence[Timebase],
    stations: Sequence[Receiver],
    *,
    window_s: float = WINDOW_S,
    min_overlap_s: float = 2.0,
    clock_floor_s: float = CLOCK_FLOOR_S,
    known: KnownWindows | None = None,
) -> Delays:
    """Each pair's delay and the covariance of their errors, from windows of ``window_s`` (at
    the recordings' rate) over the common span.

    The covariance is that of the windows' mean delays, estimated from how the windows' delays
    scatter together (so that it holds whether a receiver's noise moves all its pairs alike or
    each pair's own), plus each receiver's time-base uncertainty (its stamps' scatter over their
    number, and ``clock_floor_s``), which moves every pair of that receiver alike. ``known``:
    the windows' correlations of this set's pairs computed before (with more receivers, left
    out since: :mod:`~inference_worker.core.window_correlations`), added to.

    Raises:
        TdoaError: fewer than 3 receivers or places, or too short a common span.
    """
    if len(recordings) < 3:
        raise TdoaError("time differences need at least 3 receivers")
    problem = too_few_sites(stations)
    if problem:
        raise TdoaError(problem)
    start, end = overlap(timebases)
    problem = too_short(start, end, min_overlap_s)
    if problem:
        raise TdoaError(problem)
    window_s = min(window_s, (end - start) / (FEWEST_WINDOWS + 1.01))
    length = int(window_s * float(np.median([base.rate_hz for base in timebases])))
    slots = int((end - start) / window_s) - 1
    centres = [start + (k + 1) * window_s for k in range(slots)]
    pairs = list(itertools.combinations(range(len(recordings)), 2))
    max_lags = np.array(
        [
            great_circle_m(stations[a].lat, stations[a].lon, stations[b].lat, stations[b].lon)
            / SPEED_OF_LIGHT_M_S
            + 1e-3
            for a, b in pairs
        ]
    )
    pair_rates = np.array([(timebases[a].rate_hz + timebases[b].rate_hz) / 2 for a, b in pairs])
    margin = int(math.ceil(float(np.max(max_lags * pair_rates)))) + 2  # the longest pair's
    # Windows where blocks of a recording were lost on the way are left out; their values
    # stay 0, so that the drifts read turns between neighbouring windows only.
    present = np.flatnonzero(
        [
            all(arrived(base, c, length + 2 * margin) for base in timebases if base.segments)
            for c in centres
        ]
    )
    count = len(present)
    if count < 3:
        raise TdoaError("the recordings' blocks that arrived overlap for less than 3 windows")

    # The frequency search's windows, spread over the span: kept from the first correlation.
    searched = present[: count : max(1, count // SEARCH_WINDOWS)][:SEARCH_WINDOWS]
    layout = WindowLayout(start, centres, present, searched, length, margin)
    correlated = WindowCorrelations(
        recordings, timebases, layout, pairs, max_lags, pair_rates, known
    )
    per_window, values = correlated()
    windows = correlated.searched
    coherent = _coherent(per_window, max_lags)
    # A receiver off the others' frequency: find by how much, and turn it back.
    limits = np.zeros((len(recordings), len(recordings)))
    for row, (a, b) in enumerate(pairs):
        limits[a, b] = limits[b, a] = min(max_lags[row] * pair_rates[row], margin)
    offsets = frequency_offsets(windows, margin, limits, float(np.median(pair_rates)))
    turned = bool(np.any(np.abs(offsets) >= COARSE_HZ))
    if turned:
        per_window, values = correlated(offsets)
        coherent = _coherent(per_window, max_lags)
    else:
        offsets = np.zeros(len(recordings))
    drifts = receiver_drifts(values, pair_design(pairs, len(recordings)), coherent, window_s)
    if np.any(np.abs(drifts) > (FINE_HZ if turned else DRIFT_HZ)):
        offsets = offsets + drifts
        per_window, values = correlated(offsets)
        coherent = _coherent(per_window, max_lags)
    deaf = _deaf(coherent, pairs, len(recordings))
    if deaf:
        raise DeafReceivers(
            f"receiver(s) {', '.join(stations[k].id for k in deaf)}: {NO_COMMON_SIGNAL}", deaf
        )
    pairs = [pair for pair, ok in zip(pairs, coherent, strict=True) if ok]
    per_window = per_window[coherent]
    centre = np.median(per_window, axis=1, keepdims=True)
    spread = 1.4826 * np.median(np.abs(per_window - centre), axis=1, keepdims=True)
    # Only gross outliers go (a window where noise or a fade moved a peak far); trimming closer
    # would shrink the scatter below what the means really carry. A window off in any pair
    # goes for all, so that every pair's mean and the covariance use the same windows.
    good = np.all(np.abs(per_window - centre) <= np.maximum(OUTLIER_MADS * spread, 1e-7), axis=0)
    if np.count_nonzero(good) < 3:
        good[:] = True
    kept = per_window[:, good] * 1e6
    used = kept.shape[1]
    scatter = np.atleast_2d(np.cov(kept))
    # Few windows for many pairs make a noisy covariance: shrink it towards its diagonal.
    shrink = min(1.0, len(pairs) / (len(pairs) + used))
    scatter = (1 - shrink) * scatter + shrink * np.diag(np.diag(scatter))
    design = pair_design(pairs, len(recordings))
    clocks = np.array([tb.clock_sigma_s(clock_floor_s) * 1e6 for tb in timebases])
    # The scatter is itself estimated from the windows: with few windows for many pairs it
    # errs low as often as high, and what it misses widens the error of the means
    # (Hotelling's T²: about (n - 1) / (n - p - 1) for n windows and p pairs).
    inflation = (used - 1) / (used - len(pairs) - 1) if used > len(pairs) + 2 else used - 1.0
    covariance = inflation * scatter / used + design @ np.diag(clocks**2) @ design.T
    means = kept.mean(axis=1) * 1e-6
    delays = [
        PairDelay(a, b, float(means[row]), math.sqrt(covariance[row, row]) * 1e-6, used, count)
        for row, (a, b) in enumerate(pairs)
    ]
    return Delays(delays, covariance, offsets_hz=offsets)


NO_COMMON_SIGNAL = (
    "no signal in common with the others at the same GPS time (is the recording's time right, "
    f"its frequency within {MAX_OFFSET_HZ:g} Hz of the others', and does it hear the emitter?)"
)


def _coherent(per_window: np.ndarray, max_lags: np.ndarray) -> np.ndarray:
    """The pairs that hear a common signal. A pair whose windows agree on no delay hears none
    (one receiver's time or frequency is off): its windows' peaks scatter over the lags
    searched, hundreds of times more than a pair that shares the signal."""
    centre = np.median(per_window, axis=1, keepdims=True)
    scatter_s = 1.4826 * np.median(np.abs(per_window - centre), axis=1)
    return (scatter_s < INCOHERENT_SHARE * max_lags) & (
        scatter_s < INCOHERENT_RATIO * max(float(scatter_s.min()), 1e-6)
    )


def _deaf(coherent: np.ndarray, pairs: Sequence[tuple[int, int]], receivers: int) -> list[int]:
    """The receivers in no pair that hears a common signal."""
    return [
        k
        for k in range(receivers)
        if not any(coherent[row] for row, pair in enumerate(pairs) if k in pair)
    ]


def pair_design(pairs: Sequence[tuple[int, int]], stations: int) -> np.ndarray:
    """``(pairs, stations)``: +1 for a pair's first receiver, -1 for its second (a pair's delay
    is its first receiver's arrival minus its second's)."""
    design = np.zeros((len(pairs), stations))
    for row, (a, b) in enumerate(pairs):
        design[row, a], design[row, b] = 1.0, -1.0
    return design
