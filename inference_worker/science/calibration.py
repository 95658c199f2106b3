"""Calibration of a model's ellipses: one scale on its sigmas, fitted where it is meant to serve.

A model trained over a wider world than the nominal one (see ``World``) learns sigmas wide enough
for all of it; on captures of the nominal world its ellipses then hold more than they claim.
The scale is fitted on captures of the world the model should be calibrated for — the nominal
one by default, so that the 39/68/95 % ellipses hold what they say where the model is used, and
wider worlds are covered by what training taught it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from inference_worker.core.ellipse import scale_for_confidence
from inference_worker.science.metrics import COVERAGE_LEVELS


def coverage_at(
    d2: np.ndarray, scale: float, levels: Sequence[float] = COVERAGE_LEVELS
) -> list[float]:
    """Share of truths inside each level's ellipse once the sigmas are multiplied by ``scale``
    (``d2``: squared Mahalanobis distances at scale 1)."""
    return [float(np.mean(d2 <= (scale * scale_for_confidence(p)) ** 2)) for p in levels]


COVERAGE_TOLERANCES = {0.3935: 0.03, 0.6827: 0.02, 0.95: 0.015}
"""How far each level's coverage may stray from the level (the evaluation's bar)."""


def fit_sigma_scale(d2: np.ndarray, tolerances: dict[float, float] = COVERAGE_TOLERANCES) -> float:
    """The scale on the sigmas whose worst coverage error, in units of each level's tolerance,
    is least (errors are not quite Gaussian, so no scale puts every level exactly on its mark);
    searched from 0.3 to 3 in steps of 0.0025."""
    levels = list(tolerances)
    best, best_cost = 1.0, (float("inf"), float("inf"))
    for scale in np.arange(0.3, 3.0, 0.0025):
        errors = [
            (c - p) / tolerances[p]
            for c, p in zip(coverage_at(d2, scale, levels), levels, strict=True)
        ]
        cost = (max(abs(e) for e in errors), sum(e * e for e in errors))
        if cost < best_cost:
            best, best_cost = float(scale), cost
    return best


def scale_spread(
    d2: np.ndarray, resamples: int = 100, seed: int = 0, quantiles: tuple[float, float] = (5, 95)
) -> tuple[float, float]:
    """How far the fitted scale moves when the captures are drawn again (bootstrap): the
    ``quantiles`` (percent) of :func:`fit_sigma_scale` over ``resamples`` resamples of ``d2``."""
    rng = np.random.default_rng(seed)
    fits = [fit_sigma_scale(rng.choice(d2, size=len(d2))) for _ in range(resamples)]
    low, high = np.percentile(fits, quantiles)
    return float(low), float(high)
