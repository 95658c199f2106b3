"""Skywave: locating with paths by one hop off an ionospheric layer whose height is not known,
pure numpy and scipy.

The delays are located at every height of :data:`LAYER_HEIGHTS_M`, each height equally likely
beforehand and weighed afterwards by the likelihood's mass there (how well paths off that layer
explain the delays). Where the heights fit alike (three receivers fit any), the estimate is the
mixture of every height's; where one fits decidedly better (four receivers or more), the height
is refined between the grid's points and the estimate mixes the heights its likelihood spans
(a three-point Gauss-Hermite rule about the likeliest height).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import scipy.optimize

from inference_worker.core.contract import Receiver
from inference_worker.core.ellipse import Estimate, distance_m, metres_per_degree
from inference_worker.core.tdoa_kinds import Expectation
from inference_worker.core.tdoa_locate import Likelihood, locate
from inference_worker.core.time_differences import Delays, TdoaError

LAYER_HEIGHTS_M = tuple(float(h) for h in np.arange(100e3, 450e3 + 1, 25e3))
"""The layer heights a skywave job is located at: the E layer's ~100 km to the F2 layer's
~450 km."""
HEIGHT_STEP_M = LAYER_HEIGHTS_M[1] - LAYER_HEIGHTS_M[0]
PATH_SPREAD_M = 20e3
"""How far each receiver's path may differ from one hop off the one layer height (a standard
deviation, an assumption): a real layer's height differs between reflection points hundreds of
km apart, by 10-15 km and more, and a path lengthens 1.2-1.9 times as much as its reflection
point rises (100-1 000 km from the emitter under a layer 300 km high). Every receiver's time is
taken as uncertain by this much light travel, so that regions stay honest when the heights
differ (:meth:`~inference_worker.core.time_differences.Delays.with_receiver_spread`)."""

Fit = tuple[Estimate, Likelihood]


def layer_fits(
    stations: Sequence[Receiver], pairs: Delays, expect: Expectation, hull: Sequence[Receiver]
) -> tuple[Fit, list[tuple[float, Fit]]]:
    """The fit at the likeliest layer height, and the fits to mix with their weights (summing
    to 1).

    Raises:
        TdoaError: no height gives a position (the last height's reason, and the paths').
    """
    fits: dict[float, Fit | None] = {}
    failure: TdoaError | None = None

    def fit_at(height: float) -> Fit | None:
        nonlocal failure
        if height not in fits:
            try:
                fits[height] = locate(
                    stations, pairs, expect=expect, hull=hull, layer_height_m=height
                )
            except TdoaError as exc:
                fits[height], failure = None, exc
        return fits[height]

    def evidence(height: float) -> float:
        fit = fit_at(height)
        return -math.inf if fit is None else fit[1].log_evidence

    grid = [(h, evidence(h)) for h in LAYER_HEIGHTS_M]
    best, top = max(grid, key=lambda point: point[1])
    if top == -math.inf:
        raise TdoaError(
            f"{failure} (located with skywave paths off a layer {LAYER_HEIGHTS_M[0] / 1e3:.0f}-"
            f"{LAYER_HEIGHTS_M[-1] / 1e3:.0f} km high, each path uncertain by "
            f"{PATH_SPREAD_M / 1e3:.0f} km)"
        )
    low, high = LAYER_HEIGHTS_M[0], LAYER_HEIGHTS_M[-1]
    likeliest, spread = best, _spread(evidence, best)
    if spread is not None and spread < HEIGHT_STEP_M / 2:  # told apart: refined between points
        found = scipy.optimize.minimize_scalar(
            lambda h: -evidence(float(h)),
            bounds=(max(low, best - HEIGHT_STEP_M), min(high, best + HEIGHT_STEP_M)),
            method="bounded",
            options={"xatol": 100.0},
        )
        if -found.fun >= top:
            likeliest = float(found.x)
            spread = _spread(evidence, likeliest)
    if spread is not None and spread < HEIGHT_STEP_M / 2:  # the height told apart
        nodes = [(likeliest - math.sqrt(3) * spread, 1 / 6), (likeliest, 2 / 3)]
        nodes.append((likeliest + math.sqrt(3) * spread, 1 / 6))
        parts = [(w, fit_at(min(high, max(low, h)))) for h, w in nodes]
    else:  # the heights fit alike: each the grid's, weighed by its mass
        parts = [(math.exp(e - top), fits[h]) for h, e in grid if e > -math.inf]
    kept = [(w, fit) for w, fit in parts if fit is not None]
    total = sum(w for w, _ in kept)
    chosen = fit_at(likeliest)
    assert chosen is not None  # the grid's best, or a height found to fit at least as well
    return chosen, [(w / total, fit) for w, fit in kept]


def _spread(
    evidence: Callable[[float], float], height: float, step_m: float = 1_000.0
) -> float | None:
    """The height's standard deviation from the curvature of the log of the likelihood's mass
    about ``height``; None where it does not curve down."""
    around = [evidence(height + d) for d in (-step_m, 0.0, step_m)]
    if not all(math.isfinite(e) for e in around):
        return None
    curvature = -(around[0] - 2 * around[1] + around[2]) / step_m**2
    return 1 / math.sqrt(curvature) if curvature > 0 else None


def same_place(
    chosen: Estimate, others: Sequence[Estimate], fits: Sequence[tuple[float, Fit]]
) -> Estimate:
    """The mixture of each fit's place nearest ``chosen`` (and nearer it than any of ``others``,
    the chosen height's alternatives), weighed by the fit's weight and that place's share."""
    parts = []
    for weight, (estimate, likelihood) in fits:
        places = [estimate, *(place for place, _ in likelihood.alternatives)]
        shares = [likelihood.weight, *(share for _, share in likelihood.alternatives)]
        near = [distance_m(p.lat, p.lon, chosen.lat, chosen.lon) for p in places]
        k = int(np.argmin(near))
        if all(near[k] < distance_m(places[k].lat, places[k].lon, o.lat, o.lon) for o in others):
            parts.append((weight * shares[k], places[k]))
    return mixture(parts) if parts else chosen


def mixture(parts: Sequence[tuple[float, Estimate]]) -> Estimate:
    """The mean and covariance of a mixture of estimates (``(weight, estimate)``): each one's
    covariance plus how far its mean lies from the mixture's."""
    total = sum(weight for weight, _ in parts)
    lat = sum(weight * e.lat for weight, e in parts) / total
    lon = sum(weight * e.lon for weight, e in parts) / total
    per_lat, per_lon = metres_per_degree(lat)
    covariance = np.zeros((2, 2))
    for weight, e in parts:
        apart = np.array([(e.lon - lon) * per_lon, (e.lat - lat) * per_lat])
        covariance += weight / total * (e.covariance() + np.outer(apart, apart))
    sigma_e, sigma_n = math.sqrt(covariance[0, 0]), math.sqrt(covariance[1, 1])
    rho = float(np.clip(covariance[0, 1] / (sigma_e * sigma_n), -0.999, 0.999))
    return Estimate(lat, lon, sigma_e, sigma_n, rho)
