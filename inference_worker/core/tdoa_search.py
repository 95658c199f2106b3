"""The search for a TDoA likelihood's peaks: pure numpy and scipy.

The likelihood of the pairs' delays on a latitude × longitude grid; the coarse grid's peaks
where the search starts (and, while no peak fits the delays plausibly, the peaks of the same
likelihood with every receiver's time widened by the grid's reach); each peak zoomed on until
its grid spans the likelihood's own spread, whose moments give the estimate.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.ndimage
import scipy.optimize
import scipy.stats

from inference_worker.core.contract import Receiver
from inference_worker.core.ellipse import Estimate, metres_per_degree
from inference_worker.core.geodesy import (
    SPEED_OF_LIGHT_M_S,
    ellipsoid_offsets,
    geodesic_m,
    haversine,
    haversine_path_m,
    path_m,
)
from inference_worker.core.time_differences import Delays, PairDelay, pair_design

Grid = tuple[np.ndarray, np.ndarray, np.ndarray]
"""Latitudes, longitudes and the log-likelihood at each of their points."""
Peak = tuple[float, Estimate, Grid]
"""A refined peak: its log-likelihood, the estimate, and its grid (peak at 0)."""


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


def own_precision(delays: Sequence[PairDelay], stations: int) -> np.ndarray:
    """The delays' inverse covariance (µs⁻²): their own when measured together (:class:`Delays`),
    else built from their sigmas (:func:`delay_precision`)."""
    return delays.precision() if isinstance(delays, Delays) else delay_precision(delays, stations)


@dataclass(frozen=True)
class TravelForm:
    """The delays' chi2 under one precision as a function of the receivers' travel times ``t``:
    ``|root (t - t0)|² + floor`` (:func:`travel_form`). Made once for a search's many grids:
    making it is the one product over every pair."""

    root: np.ndarray
    t0: np.ndarray
    floor: float


def travel_form(stations: int, delays: Sequence[PairDelay], precision: np.ndarray) -> TravelForm:
    """chi2 = r' W r for the pairs' residuals r = D t - d (D: pairs × receivers, t: every
    receiver's travel time, d: the delays, W: the precision) is, with A = D' W D and t0 any
    solution of A t0 = D' W d, |R (t - t0)|² + r0' W r0, R a square root of A and r0 the
    residuals at t0: a few rows (A's rank, the receivers less one) × the receivers at every
    point, so no array of every pair at every point is made (2 016 pairs of 64 receivers held
    gigabytes)."""
    design = pair_design([(pair.a, pair.b) for pair in delays], stations)
    measured_us = np.array([pair.delay_s * 1e6 for pair in delays])
    weighed = design.T @ precision  # receivers × pairs: the one product with every pair
    values, vectors = np.linalg.eigh(weighed @ design)
    kept = values > 1e-12 * float(values.max())
    basis, values = vectors[:, kept], values[kept]
    root = (basis * np.sqrt(values)).T
    t0 = basis @ ((basis.T @ (weighed @ measured_us)) / values)
    residual = design @ t0 - measured_us
    return TravelForm(root, t0, float(residual @ precision @ residual))


Weights = np.ndarray | TravelForm
"""The delays' inverse covariance (µs⁻²), or its :class:`TravelForm` made beforehand."""


def log_likelihood_grid(
    stations: Sequence[Receiver],
    delays: Sequence[PairDelay],
    lats: np.ndarray,
    lons: np.ndarray,
    precision: Weights | None = None,
    offsets_s: Sequence[float] | None = None,
    layer_height_m: float = 0.0,
) -> np.ndarray:
    """``-chi2/2`` of the delays at every point of a latitude × longitude grid.

    Travel times are the paths along great circles over the speed of light (``layer_height_m``
    0: along the ground; else by one hop off a layer that high, :func:`path_m`), plus
    ``offsets_s`` (one per station): what the ellipsoid adds near the grid's centre
    (:func:`ellipsoid_offsets`)."""
    if precision is None:
        precision = own_precision(delays, len(stations))
    # Broadcast rather than meshed: each latitude's and longitude's sines are taken once, not
    # at every point (the same values; most of a search's time with many receivers).
    grid_lat, grid_lon = np.asarray(lats)[:, None], np.asarray(lons)[None, :]
    angles = [haversine(s.lat, s.lon, grid_lat, grid_lon) for s in stations]
    travel = travel_us(angles, layer_height_m, offsets_s)
    return _log_likelihood(travel, delays, precision)


def haversine_grid(stations: Sequence[Receiver], lats: np.ndarray, lons: np.ndarray) -> np.ndarray:
    """``(stations, lats, lons)``: the :func:`~inference_worker.core.geodesy.haversine` of each
    station's angle to each point of the grid (read-only), kept for the next call with the
    same grid: a skywave job searches the same grid at every layer height."""
    corners = tuple((s.lat, s.lon) for s in stations)
    return _haversine_grid(
        corners, np.asarray(lats, float).tobytes(), np.asarray(lons, float).tobytes()
    )


@functools.lru_cache(maxsize=1)
def _haversine_grid(
    corners: tuple[tuple[float, float], ...], lats: bytes, lons: bytes
) -> np.ndarray:
    grid_lat, grid_lon = np.frombuffer(lats)[:, None], np.frombuffer(lons)[None, :]
    angles = np.stack([haversine(lat, lon, grid_lat, grid_lon) for lat, lon in corners])
    angles.flags.writeable = False
    return angles


def travel_us(
    haversines: np.ndarray | Sequence[np.ndarray],
    layer_height_m: float = 0.0,
    offsets_s: Sequence[float] | None = None,
) -> np.ndarray:
    """Each station's travel time (µs) to the points whose angles from it have the
    ``haversines`` (one array a station:
    :func:`~inference_worker.core.geodesy.haversine_path_m`), plus its ``offsets_s``."""
    offsets = offsets_s if offsets_s is not None else [0.0] * len(haversines)
    travel = np.empty((len(haversines), *np.shape(haversines[0])))
    for row, angles, offset in zip(travel, haversines, offsets, strict=True):
        haversine_path_m(angles, layer_height_m, out=row)
        row *= 1e6 / SPEED_OF_LIGHT_M_S
        row += offset * 1e6
    return travel


def _log_likelihood(
    travel: np.ndarray, delays: Sequence[PairDelay], weights: Weights
) -> np.ndarray:
    """``-chi2/2`` of the delays where the stations' travel times (µs) are ``travel``."""
    form = weights if isinstance(weights, TravelForm) else travel_form(len(travel), delays, weights)
    projected = np.tensordot(form.root, travel, axes=(1, 0))
    projected -= (form.root @ form.t0).reshape(-1, *([1] * (travel.ndim - 1)))
    return -0.5 * (np.sum(projected**2, axis=0) + form.floor)


def coarse_peaks(
    travel: np.ndarray, delays: Sequence[PairDelay], weights: Weights, count: int
) -> list[tuple[int, int]]:
    """The grid points of the ``count`` highest local maxima of the likelihood under the
    delays' inverse covariance ``weights``, highest first, on a grid where the stations'
    travel times (µs) are ``travel``."""
    grid_ll = _log_likelihood(travel, delays, weights)
    peaks = scipy.ndimage.maximum_filter(grid_ll, size=5, mode="nearest") == grid_ll
    order = np.argsort(grid_ll[peaks])[::-1][:count]
    return [(int(i), int(j)) for i, j in np.argwhere(peaks)[order]]


def widened(
    stations: Sequence[Receiver], delays: Sequence[PairDelay], precision: np.ndarray, by_m: float
) -> np.ndarray:
    """The inverse covariance of the delays with every receiver's time widened by ``by_m`` of
    light travel: a grid whose points lie up to ``by_m`` from a crossing narrower than its step
    sees that crossing about as high as it is."""
    if by_m <= 0:
        return precision
    design = pair_design([(pair.a, pair.b) for pair in delays], len(stations))
    blur_us = by_m / SPEED_OF_LIGHT_M_S * 1e6
    # (C + b² D D')⁺ by Woodbury's identity, W - W D (I / b² + D' W D)⁻¹ D' W: a system of
    # the receivers' size rather than two pseudo-inverses of the pairs' (3 s with 2 016 pairs).
    # It holds for a W of less than full rank too, as the delays' is, whose covariance's range
    # holds D's (every receiver's error moves its pairs).
    weighed = precision @ design
    inner = np.eye(len(stations)) / blur_us**2 + design.T @ weighed
    wide = precision - weighed @ np.linalg.solve(inner, weighed.T)
    return (wide + wide.T) / 2


def freedom(precision: np.ndarray, rank: int | None = None) -> int:
    """The fit's degrees of freedom: the delays' own (``rank``, the precision's rank when
    None), less the position's two (at least 1)."""
    if rank is None:
        rank = int(np.linalg.matrix_rank(precision, hermitian=True))
    return max(1, rank - 2)


def plausible_chi2(precision: np.ndarray, rank: int | None = None) -> float:
    """The chi2 a correct position's fit exceeds one time in a thousand (``rank``: the
    precision's, when known)."""
    return float(scipy.stats.chi2.ppf(0.999, freedom(precision, rank)))


def misfit_factor(
    stations: Sequence[Receiver],
    delays: Sequence[PairDelay],
    precision: np.ndarray,
    lat: float,
    lon: float,
    layer_height_m: float = 0.0,
) -> float:
    """How many times the delays' variance must grow for them to fit the position as well as
    their uncertainties allow: Birge's ratio, the chi2 over its degrees of freedom, or, when
    larger, the part of the chi2 that shifting the receivers' times would remove over the few
    degrees of freedom those times have beyond the position (receivers less three). One
    receiver's time off shows in those alone; Birge's ratio dilutes it with the pairs' many
    others (delays round a triangle of receivers that need not add up)."""
    travel = [
        float(path_m(geodesic_m(s.lat, s.lon, lat, lon), layer_height_m)) / SPEED_OF_LIGHT_M_S
        for s in stations
    ]
    residual = np.array([(travel[p.a] - travel[p.b] - p.delay_s) * 1e6 for p in delays])
    design = pair_design([(pair.a, pair.b) for pair in delays], len(stations))
    normal = design.T @ precision @ design
    # A common shift of every time changes no delay: cut that null direction, not invert it.
    shift = np.linalg.pinv(normal, rcond=1e-9, hermitian=True) @ design.T @ precision @ residual
    rest = residual - design @ shift
    chi2 = float(residual @ precision @ residual)
    timing = chi2 - float(rest @ precision @ rest)
    return max(1.0, chi2 / freedom(precision), timing / max(1, len(stations) - 3))


def refine(
    stations: Sequence[Receiver],
    delays: Sequence[PairDelay],
    precision: Weights,
    centre: tuple[float, float],
    step: tuple[float, float],
    fine: int,
    layer_height_m: float = 0.0,
) -> Peak:
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
        offsets = ellipsoid_offsets(stations, *centre, layer_height_m)
        fine_ll = log_likelihood_grid(
            stations, delays, fine_lats, fine_lons, precision, offsets, layer_height_m
        )
        row, column = np.unravel_index(int(np.argmax(fine_ll)), fine_ll.shape)
        peak = float(fine_ll[row, column])
        fine_ll -= peak
        if zooms == 0 and walks < 4 and (row in (0, fine - 1) or column in (0, fine - 1)):
            centre = (float(fine_lats[row]), float(fine_lons[column]))  # the peak is beyond
            walks += 1
            continue
        zooms += 1  # zoomed grids are sized by the likelihood's own spread: never moved
        mean_lat, mean_lon, sd_lat, sd_lon = moments(fine_lats, fine_lons, fine_ll)[:4]
        wanted = (max(6 * sd_lat, 1e-5), max(6 * sd_lon, 1e-5))
        if all(0.5 < w / h < 1.5 for w, h in zip(wanted, half, strict=True)):
            break
        centre, half = (mean_lat, mean_lon), wanted
    return peak, grid_estimate(fine_lats, fine_lons, fine_ll), (fine_lats, fine_lons, fine_ll)


def grid_estimate(lats: np.ndarray, lons: np.ndarray, log_likelihood: np.ndarray) -> Estimate:
    """The mean and covariance of the likelihood on a grid, as an estimate."""
    mean_lat, mean_lon, _, _, var_e, var_n, cov = moments(lats, lons, log_likelihood)
    sigma_e, sigma_n = math.sqrt(max(var_e, 1.0)), math.sqrt(max(var_n, 1.0))
    rho = float(np.clip(cov / (sigma_e * sigma_n), -0.999, 0.999))
    return Estimate(mean_lat, mean_lon, sigma_e, sigma_n, rho)


def within(grid: Grid, lats: np.ndarray, lons: np.ndarray) -> Grid | None:
    """The part of a peak's grid inside the area ``lats`` × ``lons`` spans; None where less
    than two of its points each way lie there."""
    grid_lats, grid_lons, log_likelihood = grid
    rows = (grid_lats >= lats.min()) & (grid_lats <= lats.max())
    columns = (grid_lons >= lons.min()) & (grid_lons <= lons.max())
    if rows.sum() < 2 or columns.sum() < 2:
        return None
    return grid_lats[rows], grid_lons[columns], log_likelihood[np.ix_(rows, columns)]


def log_mass(lats: np.ndarray, lons: np.ndarray, log_likelihood: np.ndarray) -> float:
    """The log of the likelihood's integral over a grid (m², the likelihood 1 where its log is
    0): a peak's mass as it is, where the area of a Gaussian of its moments would misjudge a
    curved or lopsided one."""
    per_deg_lat, per_deg_lon = metres_per_degree(float(np.mean(lats)))
    cell_m2 = float(lats[1] - lats[0]) * per_deg_lat * float(lons[1] - lons[0]) * per_deg_lon
    top = float(log_likelihood.max())
    return top + math.log(float(np.exp(log_likelihood - top).sum()) * abs(cell_m2))


def moments(
    lats: np.ndarray, lons: np.ndarray, log_likelihood: np.ndarray
) -> tuple[float, float, float, float, float, float, float]:
    """Mean (degrees), standard deviations (degrees) and east/north covariance (m²) of the
    normalized likelihood on a grid."""
    weights = np.exp(log_likelihood - log_likelihood.max())
    weights /= weights.sum()
    # The grid is a product of its latitudes and longitudes: the weights summed along each
    # give the means and variances, and one product of the pair the covariance.
    by_lat, by_lon = weights.sum(axis=1), weights.sum(axis=0)
    mean_lat, mean_lon = float(by_lat @ lats), float(by_lon @ lons)
    d_lat, d_lon = lats - mean_lat, lons - mean_lon
    var_lat, var_lon = float(by_lat @ d_lat**2), float(by_lon @ d_lon**2)
    per_deg_lat, per_deg_lon = metres_per_degree(mean_lat)
    cov = float(d_lat @ weights @ d_lon) * per_deg_lat * per_deg_lon
    return (
        mean_lat,
        mean_lon,
        math.sqrt(var_lat),
        math.sqrt(var_lon),
        var_lon * per_deg_lon**2,
        var_lat * per_deg_lat**2,
        cov,
    )
