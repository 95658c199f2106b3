"""Calibration of a model's ellipses, fitted where it is meant to serve: one scale on its sigmas,
and optionally a factor on each drawn ellipse's radii (level by level).

A model trained over a wider world than the nominal one (see ``World``) learns sigmas wide enough
for all of it; on captures of the nominal world its ellipses then hold more than they claim.
The scale is fitted on captures of the world the model should be calibrated for — the nominal
one by default, so that the 39/68/95 % ellipses hold what they say where the model is used, and
wider worlds are covered by what training taught it.

One scale cannot put every level on its mark where the errors are not Gaussian (on a network
whose receivers lie far apart, fewer truths fall near the estimate and fewer far out than a
Gaussian of the same spread). Level by level, the sigma scale makes the 1σ ellipse hold its
39.35 % and each drawn ellipse (68 %, 95 %) gets the factor on its radii that makes it hold its
level: the empirical quantiles of the squared distances.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from inference_worker.core.domain import OUTSIDE_CAUTION_SHARE
from inference_worker.core.ellipse import DEFAULT_LEVELS, scale_for_confidence
from inference_worker.science.metrics import coverage_at

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


SIGMA_LEVEL = 0.3935
"""The level of the 1σ ellipse, which the sigmas themselves draw."""


@dataclass(frozen=True)
class LevelFit:
    """A calibration level by level: the scale on the sigmas and each drawn level's factor."""

    scale: float
    radius_scales: dict[float, float]


def fit_levels(d2: np.ndarray, levels: Sequence[float] = DEFAULT_LEVELS) -> LevelFit:
    """The sigma scale that makes the 1σ ellipse hold 39.35 % of ``d2``'s truths, and the factor
    on each drawn level's radii that makes that ellipse hold its level (``d2``: squared
    Mahalanobis distances at scale 1)."""
    scale = math.sqrt(float(np.quantile(d2, SIGMA_LEVEL))) / scale_for_confidence(SIGMA_LEVEL)
    scaled = d2 / scale**2
    factors = {
        p: math.sqrt(float(np.quantile(scaled, p))) / scale_for_confidence(p) for p in levels
    }
    return LevelFit(scale, factors)


def level_spread(
    d2: np.ndarray, resamples: int = 100, seed: int = 0, quantiles: tuple[float, float] = (5, 95)
) -> dict[str, tuple[float, float]]:
    """How far a level-by-level fit moves when the captures are drawn again (bootstrap): the
    ``quantiles`` (percent) of the sigma scale (``"scale"``) and of each level's factor (its
    result label, ``"68"``, ``"95"``)."""
    rng = np.random.default_rng(seed)
    fits = [fit_levels(rng.choice(d2, size=len(d2))) for _ in range(resamples)]
    found = {"scale": [f.scale for f in fits]}
    for level in fits[0].radius_scales:
        found[f"{round(level * 100)}"] = [f.radius_scales[level] for f in fits]
    spread = {}
    for name, values in found.items():
        low, high = np.percentile(values, quantiles)
        spread[name] = (float(low), float(high))
    return spread


def fit_outside_evidence(
    evidence_inside: np.ndarray, share: float = OUTSIDE_CAUTION_SHARE
) -> float:
    """The ``outside_region`` threshold that cautions ``share`` of the captures of emitters
    inside the region whose Bayes factors are ``evidence_inside``: their ``1 - share`` quantile
    (a capture is cautioned when its factor lies above it). The factor's scale depends on the
    receivers' geometry: the fixed threshold 1.35 cautions 22 % of the packaged network's
    emitters inside and 52 % of those 20-40 km outside, but 4 % and 10 % on the
    Milano-Genova-Giovi network, where its fitted threshold (1.18) cautions 25 % and 42 %: fitted
    to the same share of emitters inside, the caution means the same on every network."""
    values = np.asarray(evidence_inside, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("no captures inside the region to fit the outside_region threshold on")
    if not 0.0 < share < 1.0:
        raise ValueError(f"the share cautioned must lie between 0 and 1, not {share}")
    return float(np.quantile(values, 1.0 - share))


CAUTION_TRADE_SHARES = (0.1, 0.2, 0.25, 1 / 3, 0.4, 0.5)
"""The shares of the emitters inside at which the evaluation shows what a line costs."""

Trade = tuple[float, float, float]
"""A line on the caution's Bayes factor: (threshold, share inside cautioned, share far outside
cautioned)."""
Trades = tuple[list[Trade], Trade]
"""The lines :func:`caution_trade` gives, and the model's own threshold's."""


def cautioned_share(evidence: np.ndarray, threshold: float) -> float:
    """Share of the captures whose Bayes factor lies above ``threshold`` (NaN: nothing heard,
    never cautioned)."""
    values = np.asarray(evidence, dtype=float)
    return float(np.mean(values > threshold)) if values.size else math.nan


def caution_trade(
    evidence_inside: np.ndarray,
    evidence_far: np.ndarray,
    shares: Sequence[float] = CAUTION_TRADE_SHARES,
) -> list[Trade]:
    """What other lines on the ``outside_region`` Bayes factor trade: for each share, the
    threshold fitted to caution that share of the emitters inside, and the shares of
    ``evidence_inside`` and of ``evidence_far`` (emitters far outside) it cautions. A result
    carries its factor (``outside_evidence``), so a client may draw any of these lines."""
    return [
        (
            threshold,
            cautioned_share(evidence_inside, threshold),
            cautioned_share(evidence_far, threshold),
        )
        for threshold in (fit_outside_evidence(evidence_inside, share) for share in shares)
    ]
