"""Time difference of arrival from GPS-stamped recordings: pure numpy.

1. Align: every receiver's samples are put on GPS time through its own fitted time base
   (:func:`inference_worker.core.kiwi_wav.timebase`); only the span all receivers cover is used.
2. Delays: each pair is cross-correlated over short windows, each window's peak refined below a
   sample (FFT interpolation, then a parabola), windows far from the pair's median are rejected,
   and the rest give the pair's delay and its uncertainty.
3. Position: a likelihood over positions on the sphere (great-circle paths, ground wave at the
   speed of light), searched on a coarse grid and refined around its peak; its mean and
   covariance give the estimate and the ellipses.

Skywave (ionospheric) paths are longer than the great circle by an amount that depends on the
layer height and the hop count: this model assumes ground wave, or skywave with similar
geometry to every receiver.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from inference_worker.core.contract import Receiver
from inference_worker.core.ellipse import Estimate, metres_per_degree
from inference_worker.core.kiwi_wav import BLOCK_SAMPLES, KiwiRecording, Timebase

SPEED_OF_LIGHT_M_S = 299_792_458.0
EARTH_RADIUS_M = 6_371_008.8
UPSAMPLE = 16
"""The cross-correlation is interpolated this many times finer than a sample."""
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
    samples = recording.iq[first : first + length].astype(np.complex128)
    if len(samples) < length:
        raise TdoaError("a window reaches past the end of a recording")
    spectrum = np.fft.fft(samples)
    frequencies = np.fft.fftfreq(length)
    return np.fft.ifft(spectrum * np.exp(2j * np.pi * frequencies * fraction))


def _peak_delay(x: np.ndarray, y: np.ndarray, rate_hz: float, max_lag_s: float) -> float:
    """Delay of ``x`` behind ``y`` (seconds) at the peak of their cross-correlation."""
    n = len(x)
    cross = np.fft.fft(x) * np.conj(np.fft.fft(y))
    padded = np.zeros(n * UPSAMPLE, dtype=complex)
    half = n // 2
    padded[:half] = cross[:half]
    padded[-(n - half) :] = cross[half:]
    correlation = np.abs(np.fft.ifft(padded))
    step = 1.0 / (rate_hz * UPSAMPLE)
    lags = np.fft.fftfreq(n * UPSAMPLE, d=1.0 / (n * UPSAMPLE)) * step
    allowed = np.abs(lags) <= max_lag_s
    index = int(np.argmax(np.where(allowed, correlation, -1.0)))
    left, right = correlation[index - 1], correlation[(index + 1) % len(correlation)]
    centre = correlation[index]
    denominator = left - 2 * centre + right
    offset = 0.5 * (left - right) / denominator if denominator != 0 else 0.0
    return float(lags[index] + offset * step)


def pair_delays(
    recordings: Sequence[KiwiRecording],
    timebases: Sequence[Timebase],
    stations: Sequence[Receiver],
    *,
    window_s: float = 0.5,
    rate_hz: float = 12_000.0,
    min_overlap_s: float = 2.0,
    clock_floor_s: float = CLOCK_FLOOR_S,
) -> list[PairDelay]:
    """Each pair's delay and its uncertainty, from windows over the common span.

    The uncertainty adds the spread of the windows' delays to each receiver's time-base
    uncertainty (its stamps' scatter over their number, and ``clock_floor_s``).

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
    delays = []
    for a, b in itertools.combinations(range(len(recordings)), 2):
        baseline = great_circle_m(
            stations[a].lat, stations[a].lon, stations[b].lat, stations[b].lon
        )
        max_lag = baseline / SPEED_OF_LIGHT_M_S + 1e-3
        pair_rate = (timebases[a].rate_hz + timebases[b].rate_hz) / 2
        per_window = np.array(
            [_peak_delay(windows[a][k], windows[b][k], pair_rate, max_lag) for k in range(count)]
        )
        centre = float(np.median(per_window))
        spread = 1.4826 * float(np.median(np.abs(per_window - centre)))
        kept = per_window[np.abs(per_window - centre) <= max(3 * spread, 1e-7)]
        spread_s = float(np.std(kept, ddof=1) / math.sqrt(len(kept))) if len(kept) > 1 else 1e-5
        clock_s = [_clock_sigma(timebases[k], clock_floor_s) for k in (a, b)]
        sigma = math.sqrt(spread_s**2 + clock_s[0] ** 2 + clock_s[1] ** 2)
        delays.append(PairDelay(a, b, float(np.mean(kept)), sigma, len(kept), count))
    return delays


def _clock_sigma(base: Timebase, floor_s: float) -> float:
    """Uncertainty of a receiver's time base in the middle of its fitted span."""
    blocks = max(1, (base.end_sample - base.first_sample) // BLOCK_SAMPLES)
    return math.sqrt((base.residual_s / math.sqrt(blocks)) ** 2 + floor_s**2)


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


def _log_likelihood(
    stations: Sequence[Receiver], delays: Sequence[PairDelay], lats: np.ndarray, lons: np.ndarray
) -> np.ndarray:
    grid_lat, grid_lon = np.meshgrid(lats, lons, indexing="ij")
    travel = [
        great_circle_m(s.lat, s.lon, grid_lat, grid_lon) / SPEED_OF_LIGHT_M_S for s in stations
    ]
    chi2 = np.zeros_like(grid_lat)
    for pair in delays:
        chi2 += ((travel[pair.a] - travel[pair.b] - pair.delay_s) / pair.sigma_s) ** 2
    return -0.5 * chi2


def locate(
    stations: Sequence[Receiver],
    delays: Sequence[PairDelay],
    *,
    margin_m: float = 300_000.0,
    coarse: int = 241,
    fine: int = 161,
) -> tuple[Estimate, Likelihood]:
    """The position that best explains the delays, with its covariance from the likelihood.

    Searched over the stations' bounding box widened by ``margin_m``, then on a fine grid around
    the coarse peak.
    """
    lat_values = [s.lat for s in stations]
    lon_values = [s.lon for s in stations]
    centre_lat = float(np.mean(lat_values))
    per_deg_lat, per_deg_lon = metres_per_degree(centre_lat)
    lats = np.linspace(
        min(lat_values) - margin_m / per_deg_lat, max(lat_values) + margin_m / per_deg_lat, coarse
    )
    lons = np.linspace(
        min(lon_values) - margin_m / per_deg_lon, max(lon_values) + margin_m / per_deg_lon, coarse
    )
    coarse_ll = _log_likelihood(stations, delays, lats, lons)
    i, j = np.unravel_index(int(np.argmax(coarse_ll)), coarse_ll.shape)
    centre = (float(lats[i]), float(lons[j]))
    half = (3 * float(lats[1] - lats[0]), 3 * float(lons[1] - lons[0]))
    # Zoom until the grid spans about six standard deviations of the likelihood each way, so
    # its mean and covariance are those of the likelihood, not of the grid.
    for _ in range(6):
        fine_lats = np.linspace(centre[0] - half[0], centre[0] + half[0], fine)
        fine_lons = np.linspace(centre[1] - half[1], centre[1] + half[1], fine)
        fine_ll = _log_likelihood(stations, delays, fine_lats, fine_lons)
        fine_ll -= fine_ll.max()
        moments = _moments(fine_lats, fine_lons, fine_ll)
        mean_lat, mean_lon, sd_lat, sd_lon = moments[:4]
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
    return estimate, Likelihood(fine_lats, fine_lons, fine_ll)


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
