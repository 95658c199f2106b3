"""Where an emitter is, from time differences of arrival: the position likelihood and its
search, pure numpy and scipy.

A likelihood over positions on the Earth (paths along the WGS84 ellipsoid, ground wave at the
speed of light) that counts each receiver's error once, searched on a coarse grid (great circles
on a sphere) whose best peaks are refined with the ellipsoid's paths; the best peak's mean and
covariance give the estimate and the ellipses, and other peaks that explain the delays too are
reported as alternatives (:mod:`inference_worker.core.tdoa_search` holds the search's parts).

Paths run along the ground (ground wave), or by one hop off an ionospheric layer of a given
height (skywave: longer than the ground path by an amount that depends on the height;
:func:`inference_worker.core.tdoa.solve` tries a range of heights). Several hops are not
modelled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from inference_worker.core.contract import Receiver
from inference_worker.core.ellipse import (
    Estimate,
    distance_m,
    ellipse,
    metres_per_degree,
)
from inference_worker.core.geodesy import among
from inference_worker.core.tdoa_kinds import Expectation
from inference_worker.core.tdoa_search import (
    coarse_peaks,
    grid_estimate,
    haversine_grid,
    log_mass,
    own_precision,
    plausible_chi2,
    refine,
    travel_form,
    travel_us,
    widened,
    within,
)
from inference_worker.core.time_differences import (
    Delays,
    PairDelay,
    TdoaError,
)

DECISIVE_CHI2 = 2 * math.log(100.0)
"""How much worse (in chi2) another receiver's exclusion must fit for one to be left out: a
likelihood 100 times smaller."""

Choice = Literal["likelihood", "among_receivers"]
"""Why an estimate is the place it is (:attr:`Likelihood.chosen_by`)."""


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
    chi2_bound: float
    """The ``chi2`` that a right position exceeds one time in a thousand."""
    widened: float = 1.0
    """What every delay's variance was multiplied by for the likelihood, above 1 when the
    delays agree with no one position (``chi2`` stays their fit as measured)."""
    weight: float = 1.0
    """The share of the likelihood's mass around the estimate (below 1 with alternatives)."""
    alternatives: tuple[tuple[Estimate, float], ...] = ()
    """Other places that explain the delays too, each with its share of the likelihood's mass
    (at least 1 %). Three receivers can be met by two positions; a fourth settles it. The union
    of every place's 95 % ellipse holds the emitter 95 % of the time."""
    chosen_by: Choice = "likelihood"
    """Why the estimate is the place it is: ``likelihood`` (the highest peak that closes), or
    ``among_receivers`` (the emitter was expected among the receivers, and of the several places
    the delays leave it alone lies there)."""
    among: tuple[bool, ...] = ()
    """Whether the estimate, then each alternative, lies among the receivers: inside the hull of
    every receiver of the job, any left out (for their delays, or heard by no other) included."""
    log_evidence: float = 0.0
    """The log of the likelihood's mass over every place found that closes within the area
    searched (m², the likelihood 1 where its log is 0): how well the paths assumed explain the
    delays, to weigh one layer height against another."""
    layer_height_m: float = 0.0
    """The paths': 0 along the ground; else one hop off a layer this high (with skywave, the
    mean of the heights tried, weighed by how likely each is; the likeliest height where its
    fit left a receiver out or widened the uncertainties, and the heights were not mixed)."""
    layer_height_sd_m: float = 0.0
    """With skywave, the standard deviation of the layer's height over the heights tried."""


def locate(
    stations: Sequence[Receiver],
    delays: Sequence[PairDelay],
    *,
    margin_m: float = 600_000.0,
    coarse: int = 241,
    fine: int = 161,
    candidates: int = 4,
    precision: np.ndarray | None = None,
    expect: Expectation = "anywhere",
    hull: Sequence[Receiver] | None = None,
    layer_height_m: float = 0.0,
) -> tuple[Estimate, Likelihood]:
    """The position that best explains the delays, with its covariance from the likelihood.

    Searched over the stations' bounding box widened by ``margin_m``; the best few peaks of that
    coarse grid are each refined on a fine grid (a coarse grid can miss a sharp peak between its
    points and favour a broader wrong one), and the best refined peak that closes within the
    area searched is the estimate. The best peaks of the likelihood widened by the coarse grid's
    reach (:func:`~inference_worker.core.tdoa_search.widened`) are refined too, and more of
    them while no refined peak fits the delays plausibly.
    ``precision``: the delays' inverse covariance (µs⁻²) when not their own. ``expect``:
    ``among_receivers`` makes the estimate the one place among the receivers (inside their hull)
    when the delays leave several and exactly one lies there (and closes); the shares stay the
    likelihood's. ``hull``: the receivers among which a place is judged to lie (``stations``
    when None; all of a job's receivers where some are left out of ``stations``).
    ``layer_height_m``: the paths' (0: along the ground; else one hop off a layer that high).

    Raises:
        TdoaError: the likelihood is not closed within the area searched (its 95 % ellipse
            reaches further than ``margin_m``), or closes only where the delays do not fit
            while a line fits them: the delays fix a line, not a position.
    """
    rank = None
    if precision is None:
        precision = own_precision(delays, len(stations))
        rank = delays.rank() if isinstance(delays, Delays) else None
    lat_values, lon_values = [s.lat for s in stations], [s.lon for s in stations]
    per_deg_lat, per_deg_lon = metres_per_degree(float(np.mean(lat_values)))
    lats = np.linspace(
        min(lat_values) - margin_m / per_deg_lat, max(lat_values) + margin_m / per_deg_lat, coarse
    )
    lons = np.linspace(
        min(lon_values) - margin_m / per_deg_lon, max(lon_values) + margin_m / per_deg_lon, coarse
    )
    step = (float(lats[1] - lats[0]), float(lons[1] - lons[0]))
    form = travel_form(len(stations), delays, precision)
    height = layer_height_m
    travel = travel_us(haversine_grid(stations, lats, lons), height)
    starts = coarse_peaks(travel, delays, form, candidates)
    refined = [
        refine(stations, delays, form, (float(lats[i]), float(lons[j])), step, fine, height)
        for i, j in starts
    ]
    limit = plausible_chi2(precision, rank)
    # A crossing narrower than the grid's step can lie between its points, ranked below broad
    # peaks: the widened likelihood's best peaks are refined too, more while no peak fits.
    reach_m = 0.5 * math.hypot(step[0] * per_deg_lat, step[1] * per_deg_lon)
    wide = widened(stations, delays, precision, reach_m)
    more = coarse_peaks(travel, delays, wide, 32)
    more = [p for p in more if all(max(abs(p[0] - i), abs(p[1] - j)) > 2 for i, j in starts)]
    while more:
        refined += [
            refine(stations, delays, form, (float(lats[i]), float(lons[j])), step, fine, height)
            for i, j in more[:candidates]
        ]
        more = more[candidates:] if -2 * max(peak for peak, _, _ in refined) > limit else []
    # The estimate is the highest closed peak (a peak reaching beyond the area searched is a
    # line: only an alternative). Three receivers' two crossings both fit exactly; which is the
    # emitter rests on where emitters are expected, so both are reported with their shares, and
    # an emitter expected among the receivers makes the place among them the estimate.
    chi2 = [-2 * peak for peak, _, _ in refined]
    ranked = sorted(range(len(refined)), key=lambda k: chi2[k])
    closed = [k for k in ranked if ellipse(refined[k][1], 0.95).semi_major_m <= margin_m]
    # A place the delays do not fit is no place where a line fits them: it would be the
    # estimate, its ellipse drawn by a chi2 of millions, thousands of km from the emitter.
    if chi2[ranked[0]] <= limit:
        closed = [k for k in closed if chi2[k] <= limit]
    if not closed:
        reach_m = ellipse(refined[ranked[0]][1], 0.95).semi_major_m
        raise TdoaError(
            f"the delays do not fix a position: the likelihood stretches {reach_m / 1e3:,.0f} km "
            f"(its 95 % ellipse's semi-major axis), further than the {margin_m / 1e3:,.0f} km "
            "searched around the receivers; receivers close together or nearly on one line, or "
            "an emitter far outside them, give a line of positions rather than a point"
        )
    # A line is weighed, and placed, by its part inside the area searched: its whole grid's
    # mass, reaching thousands of km beyond, would outweigh a closed place by its length alone.
    masses = []
    for k, (peak, _, grid) in enumerate(refined):
        if k not in closed:
            part = within(grid, lats, lons)
            if part is None:  # the line runs outside the area searched: not a place here
                masses.append(-math.inf)
                continue
            refined[k] = (peak, grid_estimate(*part), part)
        masses.append(peak + log_mass(*refined[k][2]))
    kept = [closed[0]]
    for k in (k for k in ranked if k != closed[0]):
        one = refined[k][1]
        if all(
            distance_m(e.lat, e.lon, one.lat, one.lon)
            > 3 * max(one.sigma_east_m, one.sigma_north_m, e.sigma_east_m, e.sigma_north_m)
            for e in (refined[c][1] for c in kept)
        ):
            kept.append(k)  # a distinct peak, not the same one found from two grid points
    top = max(masses[k] for k in kept)  # the shares relative to the heaviest place: none is 0/0
    weights = [math.exp(m - top) for m in masses]
    total = sum(weights[k] for k in kept)
    # Only the places that close weigh the paths assumed: a line would come and go as it
    # counts as a distinct peak or not (in logs: a line can outweigh them past a float's range).
    heaviest = max(masses[k] for k in kept if k in closed)
    evidence = heaviest + math.log(sum(math.exp(masses[k] - heaviest) for k in kept if k in closed))
    places = [k for k in kept if k == kept[0] or weights[k] / total >= 0.01]
    chosen: int = kept[0]
    chosen_by: Choice = "likelihood"
    inside = {k for k in places if among(hull or stations, refined[k][1].lat, refined[k][1].lon)}
    # Only where the delays leave several places: one place is the likelihood's choice alone.
    if (
        expect == "among_receivers"
        and len(places) > 1
        and len(inside) == 1
        and min(inside) in closed
    ):
        chosen, chosen_by = min(inside), "among_receivers"
    _, estimate, (grid_lats, grid_lons, grid_ll) = refined[chosen]
    others = [k for k in places if k != chosen]
    alternatives = tuple((refined[k][1], weights[k] / total) for k in others)
    return estimate, Likelihood(
        grid_lats,
        grid_lons,
        grid_ll,
        chi2=chi2[ranked[0]],
        chi2_bound=limit,
        weight=weights[chosen] / total,
        alternatives=alternatives,
        chosen_by=chosen_by,
        among=tuple(k in inside for k in [chosen, *others]),
        log_evidence=evidence,
        layer_height_m=layer_height_m,
    )
