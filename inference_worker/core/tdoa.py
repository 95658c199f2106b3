"""Where an emitter is, from time differences of arrival: pure numpy and scipy.

A likelihood over positions on the Earth (paths along the WGS84 ellipsoid, ground wave at the
speed of light) that counts each receiver's error once, searched on a coarse grid (great circles
on a sphere) whose best peaks are refined with the ellipsoid's paths; the best peak's mean and
covariance give the estimate and the ellipses, and other peaks that explain the delays too are
reported as alternatives. :func:`solve` runs the whole method on KiwiSDR files
(:mod:`inference_worker.core.time_differences` finds the delays).

Skywave (ionospheric) paths are longer than the ground path by an amount that depends on the
layer height and the hop count: this model assumes ground wave, or skywave with similar
geometry to every receiver.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.ndimage
import scipy.optimize

from inference_worker.core.contract import Receiver
from inference_worker.core.ellipse import (
    Estimate,
    contains,
    describe,
    distance_m,
    ellipse,
    metres_per_degree,
)
from inference_worker.core.geodesy import SPEED_OF_LIGHT_M_S, ellipsoid_offsets, great_circle_m
from inference_worker.core.kiwi_wav import KiwiWavError, Timebase, read_kiwi_wav, timebase
from inference_worker.core.likelihood_map import contour_features
from inference_worker.core.time_differences import (
    Delays,
    PairDelay,
    TdoaError,
    overlap,
    pair_delays,
    pair_design,
)


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
    design = pair_design([(pair.a, pair.b) for pair in delays], stations)
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

    Raises:
        TdoaError: the likelihood is not closed within the area searched (its 95 % ellipse
            reaches further than ``margin_m``): the delays fix a line, not a position.
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
    reach_m = ellipse(estimate, 0.95).semi_major_m
    if reach_m > margin_m:
        raise TdoaError(
            f"the delays do not fix a position: the likelihood stretches {reach_m / 1e3:,.0f} km "
            f"(its 95 % ellipse's semi-major axis), further than the {margin_m / 1e3:,.0f} km "
            "searched around the receivers; receivers close together or nearly on one line, or "
            "an emitter far outside them, give a line of positions rather than a point"
        )
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
    each way, so its mean and covariance are those of the likelihood, not of the grid. The first
    grid (the coarse grid's steps) is moved while its best point is on its border: the coarse
    grid's point can be several of its steps from a narrow peak along a ridge.
    Returns the peak's log-likelihood, the estimate, and the grid (peak at 0)."""
    half = (3 * step[0], 3 * step[1])
    walks = zooms = 0
    while zooms < 8:
        fine_lats = np.linspace(centre[0] - half[0], centre[0] + half[0], fine)
        fine_lons = np.linspace(centre[1] - half[1], centre[1] + half[1], fine)
        offsets = ellipsoid_offsets(stations, *centre)
        fine_ll = log_likelihood_grid(stations, delays, fine_lats, fine_lons, precision, offsets)
        row, column = np.unravel_index(int(np.argmax(fine_ll)), fine_ll.shape)
        peak = float(fine_ll[row, column])
        fine_ll -= peak
        if zooms == 0 and walks < 4 and (row in (0, fine - 1) or column in (0, fine - 1)):
            centre = (float(fine_lats[row]), float(fine_lons[column]))  # the peak is beyond
            walks += 1
            continue
        zooms += 1  # zoomed grids are sized by the likelihood's own spread: never moved
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


def describe_solution(solution: Solution, stations: Sequence[Receiver]) -> dict[str, Any]:
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
