"""Time difference of arrival from GPS-stamped recordings: pure numpy.

1. Align: every receiver's samples are put on GPS time through its own fitted time base
   (:func:`inference_worker.core.kiwi_wav.timebase`); only the span all receivers cover is used.
2. Delays: each pair is cross-correlated over short windows, each window's peak refined below a
   sample (FFT interpolation, then a parabola), windows far from the pair's median (gross
   outliers) are rejected, and the rest give the pair's delay and its uncertainty.
3. Position: a likelihood over positions on the Earth (paths along the WGS84 ellipsoid, ground
   wave at the speed of light) that counts each receiver's error once, searched on a coarse
   grid (great circles on a sphere) whose best peaks are refined with the ellipsoid's paths;
   the best peak's mean and covariance give the estimate and the ellipses, and other peaks
   that explain the delays too are reported as alternatives.

Skywave (ionospheric) paths are longer than the ground path by an amount that depends on the
layer height and the hop count: this model assumes ground wave, or skywave with similar
geometry to every receiver.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np
import pyproj
import scipy.ndimage
import scipy.optimize

from inference_worker.core.contract import Receiver
from inference_worker.core.ellipse import (
    Estimate,
    contains,
    describe,
    distance_m,
    metres_per_degree,
)
from inference_worker.core.kiwi_wav import (
    BLOCK_SAMPLES,
    KiwiRecording,
    KiwiWavError,
    Timebase,
    read_kiwi_wav,
    timebase,
)
from inference_worker.core.likelihood_map import contour_features

SPEED_OF_LIGHT_M_S = 299_792_458.0
EARTH_RADIUS_M = 6_371_008.8
UPSAMPLE = 16
"""The cross-correlation is interpolated this many times finer than a sample."""
OUTLIER_MADS = 5.0
"""A window whose delay is this many robust standard deviations from the pair's median is an
outlier."""
INCOHERENT_SHARE = 0.15
INCOHERENT_RATIO = 30.0
"""A pair has no common signal when its windows' delays scatter over more than
``INCOHERENT_SHARE`` of the lags searched (unrelated signals scatter over most of them), or
more than ``INCOHERENT_RATIO`` times as much as the pair that agrees best."""
_MARGIN = 256
"""Samples on each side of a window that are shifted with it and then dropped."""
CLOCK_FLOOR_S = 0.3e-6
"""Timing error of a receiver that its stamps' scatter does not show (GPS receiver bias, the
interpolation onto GPS time): added to every receiver's time-base uncertainty."""


class TdoaError(ValueError):
    """The recordings cannot be located together; the message says why."""


@dataclass(frozen=True)
class PairDelay:
    a: int
    b: int
    delay_s: float
    """Arrival at ``a`` minus arrival at ``b``."""
    sigma_s: float
    windows_used: int
    windows_total: int


def overlap(timebases: Sequence[Timebase]) -> tuple[float, float]:
    """The GPS time span every receiver covers."""
    start = max(float(tb.time_of(tb.first_sample)) for tb in timebases)
    end = min(float(tb.time_of(tb.end_sample - 1)) for tb in timebases)
    return start, end


def _window(recording: KiwiRecording, base: Timebase, centre_s: float, length: int) -> np.ndarray:
    """``length`` samples of one receiver centred on GPS time ``centre_s``: the nearest raw
    samples, shifted by the remaining fraction of a sample in the frequency domain. Centring
    matters: receivers' rates differ by parts per million, which would skew windows that start
    together by microseconds at their far end; centred, the skew averages out."""
    position = (centre_s - base.t0_s) * base.rate_hz - length / 2
    first = int(math.floor(position))
    fraction = position - first
    # The shift rings at the ends of what it is applied to: shift a longer stretch and keep its
    # middle, or the ringing, at the same place in both windows of a pair, pulls their
    # correlation's peak towards the lag the windows were cut at.
    samples = recording.iq[first - _MARGIN : first + length + _MARGIN].astype(np.complex128)
    if first < _MARGIN or len(samples) < length + 2 * _MARGIN:
        raise TdoaError("a window reaches past the end of a recording")
    spectrum = np.fft.fft(samples)
    frequencies = np.fft.fftfreq(len(samples))
    shifted = np.fft.ifft(spectrum * np.exp(2j * np.pi * frequencies * fraction))
    return shifted[_MARGIN : _MARGIN + length]


def _peak_delay(x: np.ndarray, y: np.ndarray, rate_hz: float, max_lag_s: float) -> float:
    """Delay of ``x`` behind ``y`` (seconds) at the peak of their cross-correlation.

    ``y`` is longer than ``x`` by the same number of samples on each side (at least the
    largest lag searched), so at every lag searched each sample of ``x`` meets a sample of
    ``y``. Correlating two windows of one length would not: the part they share shrinks with
    the lag, which pulls a broad peak (a slowly keyed signal) towards zero lag.

    The peak is found on whole samples, then the band-limited correlation is evaluated
    ``UPSAMPLE`` times finer within a sample either side of it and a parabola fitted to the
    finest peak: the same values as interpolating the whole correlation, for a fraction of the
    work.
    """
    n, margin = len(y), (len(y) - len(x)) // 2
    padded_x = np.zeros(n, dtype=complex)
    padded_x[margin : margin + len(x)] = x
    cross = np.fft.fft(padded_x) * np.conj(np.fft.fft(y))
    coarse = np.abs(np.fft.ifft(cross))
    lags = np.fft.fftfreq(n, d=1.0 / n)  # whole samples, signed
    allowed = np.abs(lags) <= min(max_lag_s * rate_hz, margin)
    peak = float(lags[int(np.argmax(np.where(allowed, coarse, -1.0)))])
    frequencies, kernel = _fine_kernel(n)
    fine = np.abs(kernel @ (cross * np.exp(2j * np.pi * frequencies * peak)))
    index = int(np.clip(np.argmax(fine), 1, len(fine) - 2))
    left, centre, right = fine[index - 1], fine[index], fine[index + 1]
    denominator = left - 2 * centre + right
    offset = 0.5 * (left - right) / denominator if denominator != 0 else 0.0
    return (peak + (index - UPSAMPLE + offset) / UPSAMPLE) / rate_hz


@functools.lru_cache(maxsize=16)
def _fine_kernel(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Frequencies of an ``n``-point FFT, and the matrix that turns a cross-spectrum into its
    correlation at lags ``-1, -1 + 1/UPSAMPLE, ..., +1`` samples."""
    frequencies = np.fft.fftfreq(n)
    steps = np.arange(-UPSAMPLE, UPSAMPLE + 1) / UPSAMPLE
    return frequencies, np.exp(2j * np.pi * np.outer(steps, frequencies))


class Delays(Sequence[PairDelay]):
    """Every pair's delay, and the covariance of their errors (pairs share receivers and
    windows, so their errors are not independent)."""

    def __init__(self, pairs: list[PairDelay], covariance_us2: np.ndarray) -> None:
        self.pairs = pairs
        self.covariance_us2 = covariance_us2
        """``(pairs, pairs)``, in µs²."""

    def __len__(self) -> int:
        return len(self.pairs)

    @overload
    def __getitem__(self, index: int) -> PairDelay: ...

    @overload
    def __getitem__(self, index: slice) -> list[PairDelay]: ...

    def __getitem__(self, index: int | slice) -> PairDelay | list[PairDelay]:
        return self.pairs[index]

    def precision(self) -> np.ndarray:
        """The inverse covariance (µs⁻²), for ``r @ P @ r``."""
        return np.linalg.pinv(self.covariance_us2, rcond=1e-10, hermitian=True)


def pair_delays(
    recordings: Sequence[KiwiRecording],
    timebases: Sequence[Timebase],
    stations: Sequence[Receiver],
    *,
    window_s: float = 0.5,
    rate_hz: float = 12_000.0,
    min_overlap_s: float = 2.0,
    clock_floor_s: float = CLOCK_FLOOR_S,
) -> Delays:
    """Each pair's delay and the covariance of their errors, from windows over the common span.

    The covariance is that of the windows' mean delays, estimated from how the windows' delays
    scatter together (so that it holds whether a receiver's noise moves all its pairs alike or
    each pair's own), plus each receiver's time-base uncertainty (its stamps' scatter over their
    number, and ``clock_floor_s``), which moves every pair of that receiver alike.

    Raises:
        TdoaError: fewer than 3 receivers, or too short a common span.
    """
    if len(recordings) < 3:
        raise TdoaError("time differences need at least 3 receivers")
    start, end = overlap(timebases)
    if end - start < min_overlap_s:
        raise TdoaError(
            f"the recordings overlap for {max(0.0, end - start):.1f} s; at least "
            f"{min_overlap_s:g} s are needed"
        )
    length = int(window_s * rate_hz)
    count = int((end - start) / window_s) - 1
    centres = [start + (k + 1) * window_s for k in range(count)]
    windows = [
        [_window(r, tb, centre, length) for centre in centres]
        for r, tb in zip(recordings, timebases, strict=True)
    ]
    pairs = list(itertools.combinations(range(len(recordings)), 2))
    per_window = np.empty((len(pairs), count))
    max_lags = np.empty(len(pairs))
    for row, (a, b) in enumerate(pairs):
        baseline = great_circle_m(
            stations[a].lat, stations[a].lon, stations[b].lat, stations[b].lon
        )
        max_lag = max_lags[row] = float(baseline / SPEED_OF_LIGHT_M_S + 1e-3)
        pair_rate = (timebases[a].rate_hz + timebases[b].rate_hz) / 2
        margin = int(math.ceil(max_lag * pair_rate)) + 2
        per_window[row] = [
            _peak_delay(
                windows[a][k],
                _window(recordings[b], timebases[b], centres[k], length + 2 * margin),
                pair_rate,
                max_lag,
            )
            for k in range(count)
        ]
    # A pair whose windows agree on no delay hears no common signal (one receiver's time or
    # frequency is off): its windows' peaks scatter over the lags searched, hundreds of times
    # more than a pair that shares the signal.
    scatter_s = 1.4826 * np.median(
        np.abs(per_window - np.median(per_window, axis=1, keepdims=True)), axis=1
    )
    coherent = (scatter_s < INCOHERENT_SHARE * max_lags) & (
        scatter_s < INCOHERENT_RATIO * max(float(scatter_s.min()), 1e-6)
    )
    deaf = [
        stations[k].id
        for k in range(len(recordings))
        if not any(coherent[row] for row, pair in enumerate(pairs) if k in pair)
    ]
    if deaf:
        raise TdoaError(
            f"receiver(s) {', '.join(deaf)}: no signal in common with the others at the same GPS "
            "time (is the recording's time, or its frequency, right?)"
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
    design = np.zeros((len(pairs), len(recordings)))
    for row, (a, b) in enumerate(pairs):
        design[row, a], design[row, b] = 1.0, -1.0
    clocks = np.array([_clock_sigma(tb, clock_floor_s) * 1e6 for tb in timebases])
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
    return Delays(delays, covariance)


def _clock_sigma(base: Timebase, floor_s: float) -> float:
    """Uncertainty of a receiver's time base in the middle of its fitted span."""
    blocks = max(1, (base.end_sample - base.first_sample) // BLOCK_SAMPLES)
    return math.sqrt((base.residual_s / math.sqrt(blocks)) ** 2 + floor_s**2)


_WGS84 = pyproj.Geod(ellps="WGS84")


def geodesic_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Distance in metres along the WGS84 ellipsoid (GeographicLib's geodesic)."""
    return float(_WGS84.inv(lon1, lat1, lon2, lat2)[2])


def ellipsoid_offsets(stations: Sequence[Receiver], lat: float, lon: float) -> list[float]:
    """Seconds the WGS84 geodesic from each station to (lat, lon) takes beyond the sphere's
    great circle: up to about 0.5 % of the distance (a microsecond every 300 m), and so slowly
    varying that the value at a grid's centre holds across a refined grid."""
    return [
        (geodesic_m(s.lat, s.lon, lat, lon) - float(great_circle_m(s.lat, s.lon, lat, lon)))
        / SPEED_OF_LIGHT_M_S
        for s in stations
    ]


def great_circle_m(lat1: float, lon1: float, lat2: np.ndarray | float, lon2: np.ndarray | float):
    """Great-circle distance in metres (haversine on a sphere of the Earth's mean radius)."""
    p1, p2 = math.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(np.asarray(lon2) - lon1)
    h = np.sin(dp / 2) ** 2 + math.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


@dataclass(frozen=True)
class Likelihood:
    """The position likelihood on the refined grid (for maps and contours)."""

    lats: np.ndarray
    lons: np.ndarray
    log_likelihood: np.ndarray
    """``(len(lats), len(lons))``; 0 at the peak."""
    chi2: float
    """How badly the best position fits the delays: about the number of pairs minus 2 when the
    delays and their uncertainties are right; far more means a receiver's time or position, or
    the propagation, is not what the model assumes."""
    weight: float = 1.0
    """The share of the likelihood's mass around the estimate (below 1 when there are
    alternatives)."""
    alternatives: tuple[tuple[Estimate, float], ...] = ()
    """Other places that explain the delays too, each with its share of the likelihood's mass
    (at least 1 %). Three receivers can be met by two positions; a fourth settles it. The union
    of every place's 95 % ellipse holds the emitter 95 % of the time."""


def delay_precision(delays: Sequence[PairDelay], stations: int) -> np.ndarray:
    """The inverse covariance (µs⁻²) of pairs' delays known only by their sigmas (a result
    read back), for ``r @ P @ r``.

    Pairs share receivers, so their errors are not independent: with every pair measured, only
    ``stations - 1`` of them carry information. Each pair's variance is split into the shares of
    its two receivers (least squares), and the pairs' covariance is built from those shares; its
    pseudo-inverse counts each receiver's error once.
    """
    design = np.zeros((len(delays), stations))
    for k, pair in enumerate(delays):
        design[k, pair.a], design[k, pair.b] = 1.0, -1.0
    variance = np.array([(pair.sigma_s * 1e6) ** 2 for pair in delays])
    shares, _ = scipy.optimize.nnls(np.abs(design), variance)
    shares = np.maximum(shares, 0.05 * float(variance.min()))
    covariance = design @ np.diag(shares) @ design.T
    return np.linalg.pinv(covariance, rcond=1e-9, hermitian=True)


def log_likelihood_grid(
    stations: Sequence[Receiver],
    delays: Sequence[PairDelay],
    lats: np.ndarray,
    lons: np.ndarray,
    precision: np.ndarray | None = None,
    offsets_s: Sequence[float] | None = None,
) -> np.ndarray:
    """``-chi2/2`` of the delays at every point of a latitude × longitude grid.

    Travel times are great-circle distances over the speed of light, plus ``offsets_s`` (one per
    station): what the ellipsoid adds near the grid's centre (:func:`ellipsoid_offsets`)."""
    if precision is None:
        precision = (
            delays.precision()
            if isinstance(delays, Delays)
            else delay_precision(delays, len(stations))
        )
    grid_lat, grid_lon = np.meshgrid(lats, lons, indexing="ij")
    offsets = offsets_s if offsets_s is not None else [0.0] * len(stations)
    travel = [
        great_circle_m(s.lat, s.lon, grid_lat, grid_lon) / SPEED_OF_LIGHT_M_S + offset
        for s, offset in zip(stations, offsets, strict=True)
    ]
    residual = np.stack([(travel[pair.a] - travel[pair.b] - pair.delay_s) * 1e6 for pair in delays])
    return -0.5 * np.einsum("i...,ij,j...->...", residual, precision, residual)


def locate(
    stations: Sequence[Receiver],
    delays: Sequence[PairDelay],
    *,
    margin_m: float = 600_000.0,
    coarse: int = 241,
    fine: int = 161,
    candidates: int = 4,
) -> tuple[Estimate, Likelihood]:
    """The position that best explains the delays, with its covariance from the likelihood.

    Searched over the stations' bounding box widened by ``margin_m``; the best few peaks of that
    coarse grid are each refined on a fine grid (a coarse grid can miss a sharp peak between its
    points and favour a broader wrong one), and the best refined peak is the estimate.
    """
    precision = (
        delays.precision() if isinstance(delays, Delays) else delay_precision(delays, len(stations))
    )
    lat_values = [s.lat for s in stations]
    lon_values = [s.lon for s in stations]
    per_deg_lat, per_deg_lon = metres_per_degree(float(np.mean(lat_values)))
    lats = np.linspace(
        min(lat_values) - margin_m / per_deg_lat, max(lat_values) + margin_m / per_deg_lat, coarse
    )
    lons = np.linspace(
        min(lon_values) - margin_m / per_deg_lon, max(lon_values) + margin_m / per_deg_lon, coarse
    )
    coarse_ll = log_likelihood_grid(stations, delays, lats, lons, precision)
    peaks = scipy.ndimage.maximum_filter(coarse_ll, size=5, mode="nearest") == coarse_ll
    order = np.argsort(coarse_ll[peaks])[::-1][:candidates]
    step = (float(lats[1] - lats[0]), float(lons[1] - lons[0]))
    refined = [
        _refine(stations, delays, precision, (float(lats[i]), float(lons[j])), step, fine)
        for i, j in np.argwhere(peaks)[order]
    ]
    # Each peak's mass: its height times the area of its Gaussian.
    masses = [
        peak + math.log(e.sigma_east_m * e.sigma_north_m * math.sqrt(1 - e.rho**2))
        for peak, e, _ in refined
    ]
    ranked = sorted(range(len(refined)), key=lambda k: -refined[k][0])
    best_peak, estimate, (grid_lats, grid_lons, grid_ll) = refined[ranked[0]]
    top = max(masses)
    weights = [math.exp(m - top) for m in masses]
    kept = [ranked[0]]
    for k in ranked[1:]:
        other = refined[k][1]
        if all(
            distance_m(refined[c][1].lat, refined[c][1].lon, other.lat, other.lon)
            > 3 * max(other.sigma_east_m, other.sigma_north_m, refined[c][1].sigma_east_m)
            for c in kept
        ):
            kept.append(k)  # a distinct peak, not the same one found from two grid points
    total = sum(weights[k] for k in kept)
    alternatives = tuple(
        (refined[k][1], weights[k] / total) for k in kept[1:] if weights[k] / total >= 0.01
    )
    return estimate, Likelihood(
        grid_lats,
        grid_lons,
        grid_ll,
        chi2=-2 * best_peak,
        weight=weights[ranked[0]] / total,
        alternatives=alternatives,
    )


def _refine(
    stations: Sequence[Receiver],
    delays: Sequence[PairDelay],
    precision: np.ndarray,
    centre: tuple[float, float],
    step: tuple[float, float],
    fine: int,
) -> tuple[float, Estimate, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Zoom on one peak until the grid spans about six standard deviations of the likelihood
    each way, so its mean and covariance are those of the likelihood, not of the grid.
    Returns the peak's log-likelihood, the estimate, and the grid (peak at 0)."""
    half = (3 * step[0], 3 * step[1])
    for _ in range(8):
        fine_lats = np.linspace(centre[0] - half[0], centre[0] + half[0], fine)
        fine_lons = np.linspace(centre[1] - half[1], centre[1] + half[1], fine)
        offsets = ellipsoid_offsets(stations, *centre)
        fine_ll = log_likelihood_grid(stations, delays, fine_lats, fine_lons, precision, offsets)
        peak = float(fine_ll.max())
        fine_ll -= peak
        mean_lat, mean_lon, sd_lat, sd_lon = _moments(fine_lats, fine_lons, fine_ll)[:4]
        wanted = (max(6 * sd_lat, 1e-5), max(6 * sd_lon, 1e-5))
        if all(0.5 < w / h < 1.5 for w, h in zip(wanted, half, strict=True)):
            break
        centre, half = (mean_lat, mean_lon), wanted
    mean_lat, mean_lon, _, _, var_e, var_n, cov = _moments(fine_lats, fine_lons, fine_ll)
    sigma_e, sigma_n = math.sqrt(max(var_e, 1.0)), math.sqrt(max(var_n, 1.0))
    estimate = Estimate(
        lat=mean_lat,
        lon=mean_lon,
        sigma_east_m=sigma_e,
        sigma_north_m=sigma_n,
        rho=float(np.clip(cov / (sigma_e * sigma_n), -0.999, 0.999)),
    )
    return peak, estimate, (fine_lats, fine_lons, fine_ll)


def _moments(
    lats: np.ndarray, lons: np.ndarray, log_likelihood: np.ndarray
) -> tuple[float, float, float, float, float, float, float]:
    """Mean (degrees), standard deviations (degrees) and east/north covariance (m²) of the
    normalized likelihood on a grid."""
    weights = np.exp(log_likelihood - log_likelihood.max())
    weights /= weights.sum()
    grid_lat, grid_lon = np.meshgrid(lats, lons, indexing="ij")
    mean_lat = float((weights * grid_lat).sum())
    mean_lon = float((weights * grid_lon).sum())
    d_lat, d_lon = grid_lat - mean_lat, grid_lon - mean_lon
    var_lat, var_lon = float((weights * d_lat**2).sum()), float((weights * d_lon**2).sum())
    per_deg_lat, per_deg_lon = metres_per_degree(mean_lat)
    cov = float((weights * d_lat * d_lon).sum()) * per_deg_lat * per_deg_lon
    return (
        mean_lat,
        mean_lon,
        math.sqrt(var_lat),
        math.sqrt(var_lon),
        var_lon * per_deg_lon**2,
        var_lat * per_deg_lat**2,
        cov,
    )


@dataclass(frozen=True)
class Solution:
    estimate: Estimate
    likelihood: Likelihood
    pairs: Delays
    timebases: list[Timebase]
    overlap_s: float

    def holds(self, lat: float, lon: float, confidence: float) -> bool:
        """Whether a point lies in the ellipse at ``confidence`` of the estimate or of one of
        its alternatives (their union is the confidence region)."""
        places = [self.estimate, *(other for other, _ in self.likelihood.alternatives)]
        return any(contains(place, lat, lon, confidence) for place in places)


def solve(
    files: Sequence[bytes], stations: Sequence[Receiver], *, min_overlap_s: float = 2.0
) -> Solution:
    """Locate the emitter heard in one KiwiSDR IQ WAV file per station (in the same order).

    Raises:
        TdoaError: a file is unusable (no GPS time, not a KiwiSDR IQ recording), fewer than 3
            receivers, or too short a common span; the message names the receiver.
    """
    if len(files) != len(stations):
        raise TdoaError(f"{len(files)} recordings for {len(stations)} receivers")
    recordings, bases = [], []
    for data, station in zip(files, stations, strict=True):
        try:
            recording = read_kiwi_wav(data)
            bases.append(timebase(recording))
        except KiwiWavError as exc:
            raise TdoaError(f"receiver {station.id}: {exc}") from None
        recordings.append(recording)
    pairs = pair_delays(recordings, bases, stations, min_overlap_s=min_overlap_s)
    estimate, likelihood = locate(stations, pairs)
    start, end = overlap(bases)
    return Solution(estimate, likelihood, pairs, bases, end - start)


def describe_solution(solution: Solution, stations: Sequence[Receiver]) -> dict[str, object]:
    """The JSON result of a TDoA job: the position and ellipses as for a model, the receivers'
    time bases, each pair's time difference, and the likelihood's contours."""
    likelihood = solution.likelihood
    return {
        **describe(solution.estimate),
        "method": "tdoa",
        "overlap_s": round(solution.overlap_s, 3),
        "receivers": [
            {
                "id": station.id,
                "lat": station.lat,
                "lon": station.lon,
                "sample_rate_hz": round(base.rate_hz, 4),
                "stamp_residual_us": round(base.residual_s * 1e6, 3),
                "rejected_blocks": base.rejected_blocks,
            }
            for station, base in zip(stations, solution.timebases, strict=True)
        ],
        "pairs": [
            {
                "receivers": [stations[pair.a].id, stations[pair.b].id],
                "delay_us": round(pair.delay_s * 1e6, 4),
                "sigma_us": round(pair.sigma_s * 1e6, 4),
                "windows_used": pair.windows_used,
                "windows_total": pair.windows_total,
            }
            for pair in solution.pairs
        ],
        "fit_chi2": round(likelihood.chi2, 3),
        "weight": round(likelihood.weight, 4),
        "alternatives": [
            {**describe(other), "weight": round(weight, 4)}
            for other, weight in likelihood.alternatives
        ],
        "likelihood_contours": contour_features(
            likelihood.lats, likelihood.lons, likelihood.log_likelihood
        ),
    }
