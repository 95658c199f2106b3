"""Accuracy and calibration figures of position estimates with Gaussian uncertainty (pure numpy).

Estimates are arrays in a local east/north frame in metres: means ``(n, 2)`` and covariances
``(n, 2, 2)``; truths ``(n, 2)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from inference_worker.core.ellipse import scale_for_confidence

COVERAGE_LEVELS = (0.3935, 0.6827, 0.95)


def covariance_from_sigmas(
    sigma_east: np.ndarray, sigma_north: np.ndarray, rho: np.ndarray
) -> np.ndarray:
    """Stack ``(n, 2, 2)`` covariances from standard deviations and correlations."""
    cross = rho * sigma_east * sigma_north
    return np.stack(
        [np.stack([sigma_east**2, cross], -1), np.stack([cross, sigma_north**2], -1)], -2
    )


def mahalanobis_squared(
    means: np.ndarray, covariances: np.ndarray, truths: np.ndarray
) -> np.ndarray:
    """Squared Mahalanobis distance of each truth under its estimate's Gaussian."""
    d = truths - means
    solved = np.linalg.solve(covariances, d[..., None])[..., 0]
    return np.einsum("ni,ni->n", d, solved)


def coverage(
    means: np.ndarray,
    covariances: np.ndarray,
    truths: np.ndarray,
    levels: Sequence[float] = COVERAGE_LEVELS,
    radius_scales: Mapping[float, float] | None = None,
) -> dict[float, float]:
    """Share of truths inside the ellipse of each confidence level (its radii times the level's
    ``radius_scales`` entry, as the model draws it)."""
    d2 = mahalanobis_squared(means, covariances, truths)
    return dict(zip(levels, coverage_at(d2, 1.0, levels, radius_scales), strict=True))


def coverage_at(
    d2: np.ndarray,
    scale: float,
    levels: Sequence[float] = COVERAGE_LEVELS,
    radius_scales: Mapping[float, float] | None = None,
) -> list[float]:
    """Share of truths inside each level's ellipse once the sigmas are multiplied by ``scale``
    and each level's radii by its ``radius_scales`` entry (``d2``: squared Mahalanobis
    distances at scale 1)."""
    factors = radius_scales or {}
    return [
        float(np.mean(d2 <= (scale * factors.get(p, 1.0) * scale_for_confidence(p)) ** 2))
        for p in levels
    ]


def gaussian_nll_km(means: np.ndarray, covariances: np.ndarray, truths: np.ndarray) -> float:
    """Mean negative log-likelihood of the truths (2-D Gaussian, densities per km²)."""
    cov_km = covariances / 1e6
    d2 = mahalanobis_squared(means, covariances, truths)
    log_det = np.log(np.linalg.det(cov_km))
    return float(np.mean(0.5 * d2 + 0.5 * log_det + math.log(2.0 * math.pi)))


@dataclass(frozen=True)
class ErrorSummary:
    count: int
    median_km: float
    mean_km: float
    p90_km: float


def error_summary(means: np.ndarray, truths: np.ndarray) -> ErrorSummary:
    errors = np.hypot(*(means - truths).T) / 1e3
    return ErrorSummary(
        count=int(errors.size),
        median_km=float(np.median(errors)),
        mean_km=float(np.mean(errors)),
        p90_km=float(np.percentile(errors, 90)),
    )


def calibration_curve(
    means: np.ndarray, covariances: np.ndarray, truths: np.ndarray, levels: np.ndarray
) -> np.ndarray:
    """Observed coverage at each claimed level (a perfect model gives the diagonal)."""
    d2 = mahalanobis_squared(means, covariances, truths)
    limits = -2.0 * np.log1p(-levels)
    return np.mean(d2[:, None] <= limits[None, :], axis=0)
