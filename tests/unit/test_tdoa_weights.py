"""The delays' weights: the precision of a set without one receiver, the widened weights of
the coarse search, and the grid's likelihood through the receivers' travel times, each against
the direct inversion or sum it stands for."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest

from inference_worker.core.contract import Receiver
from inference_worker.core.ellipse import metres_per_degree
from inference_worker.core.geodesy import SPEED_OF_LIGHT_M_S, great_circle_m
from inference_worker.core.tdoa_search import (
    coarse_peaks,
    haversine_grid,
    log_likelihood_grid,
    moments,
    own_precision,
    travel_us,
    widened,
)
from inference_worker.core.time_differences import Delays, PairDelay, pair_design

from .test_tdoa import EMITTER, STATIONS, exact_delays


def test_delays_without_a_receiver_keep_the_others_pairs_and_their_covariance():
    pairs = [
        PairDelay(a, b, float(a + b), 1e-6, 10, 10) for a, b in itertools.combinations(range(4), 2)
    ]
    covariance = np.arange(36.0).reshape(6, 6)
    rest = Delays(pairs, covariance).without(1)
    assert [(p.a, p.b, p.delay_s) for p in rest] == [(0, 1, 2.0), (0, 2, 3.0), (1, 2, 5.0)]
    kept = [1, 2, 5]  # the pairs (0, 2), (0, 3) and (2, 3) of the four receivers
    assert (rest.covariance_us2 == covariance[np.ix_(kept, kept)]).all()


def test_the_covariance_cannot_change_under_the_precision_taken_from_it():
    covariance = np.eye(3)
    delays = Delays(
        [PairDelay(a, b, 0.0, 1e-6, 10, 10) for a, b in ((0, 1), (0, 2), (1, 2))], covariance
    )
    delays.precision()
    with pytest.raises(ValueError, match="read-only"):
        delays.covariance_us2[0, 0] = 4.0


def test_the_precision_without_a_receiver_is_the_inverse_of_the_kept_covariance():
    """Taken from the whole precision (a block of an inverse), not inverted again."""
    rng = np.random.default_rng(3)
    pairs = list(itertools.combinations(range(6), 2))
    spread = rng.normal(size=(len(pairs), len(pairs)))
    covariance = spread @ spread.T / len(pairs) + np.eye(len(pairs)) * 0.01
    delays = Delays([PairDelay(a, b, 0.0, 1e-6, 10, 10) for a, b in pairs], covariance)
    assert delays.rank() == len(pairs)
    for receiver in range(6):
        rest = delays.without(receiver)
        expected = np.linalg.inv(rest.covariance_us2)
        assert rest.precision() == pytest.approx(expected, rel=1e-8, abs=1e-8 * abs(expected).max())
        assert rest.rank() == len(rest)


@pytest.mark.parametrize("rank", ["full", "receivers less one"])
def test_widened_weights_are_the_inverse_of_the_widened_covariance(rank):
    """Woodbury's identity, W - W D (I/b² + D'WD)⁻¹ D'W, is (C + b² D D')⁺ for a full
    covariance and for one of the receivers' errors alone (rank the receivers less one)."""
    rng = np.random.default_rng(4)
    stations = [Receiver(f"R{k}", 45.0 + k, 9.0 + k * k / 3) for k in range(5)]
    pairs = list(itertools.combinations(range(5), 2))
    design = pair_design(pairs, 5)
    covariance = design @ np.diag(rng.uniform(0.2, 1.0, 5)) @ design.T
    if rank == "full":
        spread = rng.normal(size=(len(pairs), len(pairs)))
        covariance += spread @ spread.T / 100
    precision = np.linalg.pinv(covariance, rcond=1e-10, hermitian=True)
    delays = [PairDelay(a, b, 0.0, 1e-6, 10, 10) for a, b in pairs]
    blur_us = 250.0 / SPEED_OF_LIGHT_M_S * 1e6
    expected = np.linalg.pinv(covariance + blur_us**2 * design @ design.T, hermitian=True)
    assert widened(stations, delays, precision, 250.0) == pytest.approx(
        expected, abs=1e-9 * abs(expected).max()
    )
    assert widened(stations, delays, precision, 0.0) is precision  # nothing to widen by


@pytest.mark.parametrize("rank", ["full", "receivers less one"])
def test_the_grid_likelihood_is_every_pair_weighed_at_every_point(rank):
    """Taken through the receivers' travel times, the grid's -chi2/2 is r' W r of every pair's
    residual at every point, for a full-rank precision and for a rank-deficient one."""
    stations = (*STATIONS, Receiver("south", 43.9, 7.4), Receiver("far", 48.6, 12.9))
    delays = exact_delays(stations, EMITTER, 1e-6)
    pairs = [(p.a, p.b) for p in delays]
    design = pair_design(pairs, len(stations))
    rng = np.random.default_rng(3)
    mixed = rng.normal(size=(len(pairs), len(pairs)))
    precision = (
        mixed @ mixed.T if rank == "full" else design @ np.diag([1.0, 2, 3, 4, 5]) @ design.T
    )
    noisy = [replace(p, delay_s=p.delay_s + 3e-6 * rng.normal()) for p in delays]
    lats, lons = np.linspace(45.0, 47.0, 5), np.linspace(7.0, 9.5, 6)
    grid = log_likelihood_grid(stations, noisy, lats, lons, precision)
    for i, j in itertools.product(range(5), range(6)):
        travel = [
            great_circle_m(s.lat, s.lon, lats[i], lons[j]) / SPEED_OF_LIGHT_M_S for s in stations
        ]
        residual = (design @ travel - [p.delay_s for p in noisy]) * 1e6
        assert grid[i, j] == pytest.approx(
            -0.5 * residual @ precision @ residual, rel=1e-9, abs=1e-6
        )


@pytest.mark.parametrize("height", [0.0, 300e3])
def test_the_coarse_search_sees_the_grid_likelihood_and_keeps_its_angles(height):
    # The coarse grid's angles are kept for the next search of the same grid (a skywave job
    # searches it at every layer height); the likelihood on them is the grid's.
    lats, lons = np.linspace(43.0, 48.0, 41), np.linspace(5.0, 11.0, 43)
    delays = exact_delays(STATIONS, EMITTER, 1e-6)
    angles = haversine_grid(STATIONS, lats, lons)
    assert haversine_grid(STATIONS, lats.copy(), lons.copy()) is angles
    assert haversine_grid(STATIONS[::-1], lats, lons) is not angles
    precision = own_precision(delays, len(STATIONS))
    grid = log_likelihood_grid(STATIONS, delays, lats, lons, precision, layer_height_m=height)
    peaks = coarse_peaks(travel_us(angles, height), delays, precision, 3)
    assert peaks[0] == np.unravel_index(int(np.argmax(grid)), grid.shape)


def test_a_grids_moments_are_those_of_its_points():
    # Summed along the grid's rows and columns: the same moments as weighing every point.
    rng = np.random.default_rng(11)
    lats, lons = np.linspace(44.0, 44.4, 23), np.linspace(8.0, 8.7, 31)
    grid_lat, grid_lon = np.meshgrid(lats, lons, indexing="ij")
    tilted = ((grid_lat - 44.2) * 9 + (grid_lon - 8.3) * 4) ** 2 + (grid_lon - 8.4) ** 2 * 30
    log_likelihood = -tilted * 40 + rng.normal(0, 0.1, tilted.shape)
    weights = np.exp(log_likelihood - log_likelihood.max())
    weights /= weights.sum()
    mean_lat, mean_lon = (weights * grid_lat).sum(), (weights * grid_lon).sum()
    d_lat, d_lon = grid_lat - mean_lat, grid_lon - mean_lon
    var_lat, var_lon = (weights * d_lat**2).sum(), (weights * d_lon**2).sum()
    got = moments(lats, lons, log_likelihood)
    assert got[:4] == pytest.approx([mean_lat, mean_lon, var_lat**0.5, var_lon**0.5], rel=1e-12)
    per_deg_lat, per_deg_lon = metres_per_degree(mean_lat)
    expected = [var_lon * per_deg_lon**2, var_lat * per_deg_lat**2]
    assert got[4:6] == pytest.approx(expected, rel=1e-9)
    cov = (weights * d_lat * d_lon).sum() * per_deg_lat * per_deg_lon
    assert got[6] == pytest.approx(cov, rel=1e-9) and abs(cov) > 1e-3 * (got[4] * got[5]) ** 0.5
