"""Are a TDoA likelihood's mass shares worth believing? Three receivers' hyperbolas can cross
twice, and both crossings fit the delays exactly: the estimate is one (the higher peak), the
other an alternative, each with its share of the likelihood's mass. Here the delays are drawn
from the likelihood's own model (each receiver's time off by a Gaussian error of its stated
size) for an emitter placed as the evaluation sets place it, or spread evenly over the area the
search covers, and each place's share is set against where the emitter was.

A share is the likelihood's, so it is a probability only for emitters spread evenly over the
area searched; where emitters are more often among the receivers, the shares say less.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from inference_worker.core.contract import Receiver
from inference_worker.core.ellipse import distance_m, metres_per_degree
from inference_worker.core.geodesy import SPEED_OF_LIGHT_M_S, geodesic_m
from inference_worker.core.tdoa_locate import locate
from inference_worker.core.time_differences import Delays, PairDelay, TdoaError, pair_design
from inference_worker.science.kiwi_sets import place_emitter, place_receivers

PRIORS = ("as the sets", "evenly")
"""Where emitters are drawn: as the evaluation sets place them (inside the receivers' region, or
three times in ten up to 300 km outside it), or evenly over the receivers' region widened by
500 km (the search covers 600 km)."""
EVEN_MARGIN_M = 500e3


def noisy_delays(
    rng: np.random.Generator,
    stations: Sequence[Receiver],
    emitter: tuple[float, float],
    sigma_us: Sequence[float],
) -> Delays:
    """Every pair's delay of the emitter's arrival, each receiver's time off by a Gaussian error
    of its ``sigma_us``, with the covariance those errors give the pairs."""
    n = len(stations)
    arrival = (
        np.array([geodesic_m(s.lat, s.lon, *emitter) / SPEED_OF_LIGHT_M_S for s in stations])
        + rng.normal(0.0, sigma_us) * 1e-6
    )
    pairs = [(a, b) for a in range(n) for b in range(a + 1, n)]
    design = pair_design(pairs, n)
    variance = np.asarray(sigma_us, dtype=float) ** 2
    return Delays(
        [
            PairDelay(
                a,
                b,
                float(arrival[a] - arrival[b]),
                math.sqrt(variance[a] + variance[b]) * 1e-6,
                1,
                1,
            )
            for a, b in pairs
        ],
        design @ np.diag(variance) @ design.T,
    )


def even_emitter(rng: np.random.Generator, stations: Sequence[Receiver]) -> tuple[float, float]:
    """An emitter drawn evenly over the receivers' region widened by ``EVEN_MARGIN_M``."""
    lats, lons = [s.lat for s in stations], [s.lon for s in stations]
    per_deg_lat, per_deg_lon = metres_per_degree(float(np.mean(lats)))
    reach_lat, reach_lon = EVEN_MARGIN_M / per_deg_lat, EVEN_MARGIN_M / per_deg_lon
    return (
        float(rng.uniform(min(lats) - reach_lat, max(lats) + reach_lat)),
        float(rng.uniform(min(lons) - reach_lon, max(lons) + reach_lon)),
    )


@dataclass(frozen=True)
class Places:
    """One ambiguous trial: every place's share (the estimate first) and which place lies
    nearest the emitter."""

    weights: tuple[float, ...]
    nearest: int
    among: tuple[bool, ...] = ()
    """Whether each place lies among the receivers (inside their convex hull)."""
    expected_right: bool = False
    """Whether the estimate of the same delays with the emitter expected among the receivers
    (``expect="among_receivers"``) is the place nearest the emitter."""


def drawn(seed: int, prior: str) -> tuple[tuple[Receiver, ...], tuple[float, float], Delays]:
    """Three receivers, an emitter drawn by ``prior``, and delays from the likelihood's own
    model (receivers' times off by 0.5-3 µs rms)."""
    rng = np.random.default_rng(seed)
    stations = place_receivers(rng, 3)
    emitter = place_emitter(rng, stations)[0] if prior == PRIORS[0] else even_emitter(rng, stations)
    return (
        stations,
        emitter,
        noisy_delays(rng, stations, emitter, rng.uniform(0.5, 3.0, 3).tolist()),
    )


def trial(seed: int, prior: str) -> Places | None:
    """The places of an ambiguous fit of a :func:`drawn` set, or None when the fit names one
    place or none."""
    stations, emitter, delays = drawn(seed, prior)
    try:
        estimate, likelihood = locate(stations, delays)
    except TdoaError:
        return None
    if not likelihood.alternatives:
        return None
    places = [(estimate, likelihood.weight), *likelihood.alternatives]
    distances = [distance_m(place.lat, place.lon, *emitter) for place, _ in places]
    expected = locate(stations, delays, expect="among_receivers")[0]
    return Places(
        tuple(weight for _, weight in places),
        int(np.argmin(distances)),
        likelihood.among,
        distance_m(expected.lat, expected.lon, *emitter) <= min(distances) + 1.0,
    )


@dataclass(frozen=True)
class Reliability:
    """How the shares of ambiguous fits bear out."""

    fits: int
    estimate_right: int
    """Fits whose estimate is the place nearest the emitter."""
    mean_estimate_share: float
    bins: tuple[tuple[float, float, int, float, float], ...]
    """Per band of shares (low, high): places in it, their mean share, and how often the
    emitter was nearest them."""
    one_among: int = 0
    """Fits with exactly one place among the receivers."""
    one_among_right: int = 0
    """Of those, fits whose place among the receivers is the one nearest the emitter."""
    expected_right: int = 0
    """Fits whose estimate with the emitter expected among the receivers is the place nearest
    the emitter."""


SHARE_BANDS = ((0.0, 0.2), (0.2, 0.5), (0.5, 0.8), (0.8, 1.0))


def reliability(trials: Sequence[Places]) -> Reliability:
    """The estimate's hit rate and the shares' reliability over ambiguous trials."""
    shares = [(w, k == t.nearest) for t in trials for k, w in enumerate(t.weights)]
    bins = []
    for low, high in SHARE_BANDS:
        inside = [(w, hit) for w, hit in shares if low <= w < high or (high == 1.0 and w == 1.0)]
        if inside:
            mean_share = float(np.mean([w for w, _ in inside]))
            hits = float(np.mean([hit for _, hit in inside]))
            bins.append((low, high, len(inside), mean_share, hits))
    single = [t for t in trials if sum(t.among) == 1]
    return Reliability(
        one_among=len(single),
        one_among_right=sum(t.among[t.nearest] for t in single),
        expected_right=sum(t.expected_right for t in trials),
        fits=len(trials),
        estimate_right=sum(t.nearest == 0 for t in trials),
        mean_estimate_share=float(np.mean([t.weights[0] for t in trials])) if trials else math.nan,
        bins=tuple(bins),
    )
