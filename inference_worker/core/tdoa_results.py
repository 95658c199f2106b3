"""The JSON result of a TDoA job, from a :class:`~inference_worker.core.tdoa.Solution`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from inference_worker.core.contract import Receiver
from inference_worker.core.ellipse import describe, distance_m
from inference_worker.core.likelihood_map import contour_features
from inference_worker.core.tdoa import Solution
from inference_worker.core.time_differences import NO_COMMON_SIGNAL

SKYWAVE_FROM_MHZ = 2.0
"""From this frequency up (HF and above) a signal's ground wave fades within tens of km over
land: a receiver much further away hears it by the ionosphere, if at all."""
GROUND_WAVE_REACH_M = 100e3
"""How far from the estimate a receiver may lie, at ``SKYWAVE_FROM_MHZ`` and above, before the
result cautions that it likely heard the emitter by skywave."""


def skywave_caution(
    solution: Solution, stations: Sequence[Receiver], frequency_mhz: float | None
) -> dict[str, Any] | None:
    """A caution when receivers the position rests on likely heard the emitter by skywave: at
    HF, further than a ground wave reaches from the estimate (those left out are not named).
    The method assumes ground-wave paths; a reflected path is hundreds of km longer, and
    unequally so for each receiver, so the estimate can be 100 km or more off and its regions
    do not hold it (``tools/evaluate_tdoa.py``'s skywave sets). None otherwise, and where the
    solution was located by skywave paths (``propagation`` ``skywave``)."""
    modelled = solution.likelihood.layer_height_m > 0
    if modelled or frequency_mhz is None or frequency_mhz < SKYWAVE_FROM_MHZ:
        return None
    at, left_out = solution.estimate, solution.left_out
    far = [
        s.id
        for k, s in enumerate(stations)
        if k not in left_out and distance_m(at.lat, at.lon, s.lat, s.lon) > GROUND_WAVE_REACH_M
    ]
    if not far:
        return None
    return {
        "code": "skywave",
        "detail": (
            f"at {frequency_mhz:g} MHz these receivers lie beyond a ground wave's reach "
            f"(~{GROUND_WAVE_REACH_M / 1e3:.0f} km) of the estimate and likely heard it by the "
            "ionosphere; this job assumed ground-wave paths, so the position can be 100 km or "
            "more off and its ellipses do not hold it: submit it with propagation=skywave"
        ),
        "receivers": far,
    }


UNUSED_S = 1.0
"""How much of a receiver's recording may lie off its time base, unused, before the result
cautions about it."""


def unused_caution(solution: Solution, stations: Sequence[Receiver]) -> dict[str, Any] | None:
    """A caution naming the receivers more than ``UNUSED_S`` of whose recording was not used:
    its stamps jump (the receiver's time set again; blocks lost on the way are bridged) or have
    no GPS time, and only the longest stretch on one time base is used, so the position rests
    on less than was sent. None where every recording was used (bar a block or a few)."""
    unused = []
    for station, base in zip(stations, solution.timebases, strict=True):
        total_s = base.recording_samples / base.rate_hz
        used_s = base.used_samples / base.rate_hz
        if total_s - used_s > UNUSED_S:
            unused.append((station.id, used_s, total_s))
    if not unused:
        return None
    return {
        "code": "partly_unused",
        "detail": (
            "part of these recordings has no GPS time consistent with the rest (the stamps jump: "
            "the time set again, or no fix) and was not used: "
            + ", ".join(f"{name} {used:.1f} s of {total:.1f} s" for name, used, total in unused)
        ),
        "receivers": [name for name, _, _ in unused],
    }


def _km(metres: float) -> float | None:
    return round(metres / 1e3, 1) if metres > 0 else None


def describe_solution(
    solution: Solution, stations: Sequence[Receiver], frequency_mhz: float | None = None
) -> dict[str, Any]:
    """The JSON result of a TDoA job: the places (each saying whether it lies among the
    receivers; the estimate, why it is the one chosen) and ellipses as for a model, the
    receivers' time bases, each pair's time difference, the likelihood's contours, and
    ``cautions`` (weak evidence against the result, as in a model's quality block: receivers
    likely hearing by skywave at ``frequency_mhz``, recordings partly unused)."""
    likelihood, odd = solution.likelihood, solution.excluded
    # Each receiver's frequency offset from the middle of the others', as its windows were
    # turned back by it (known only relative to one another).
    offsets = solution.pairs.offsets_hz
    offsets = np.zeros(len(stations)) if offsets is None else offsets - np.nanmedian(offsets)
    return {
        **describe(solution.estimate),
        "among_receivers": likelihood.among[0],
        "method": "tdoa",
        "propagation": "skywave" if likelihood.layer_height_m > 0 else "ground",
        "layer_height_km": _km(likelihood.layer_height_m),
        "layer_height_sd_km": _km(likelihood.layer_height_sd_m),
        "overlap_s": round(solution.overlap_s, 3),
        "receivers": [
            {
                "id": station.id,
                "lat": station.lat,
                "lon": station.lon,
                "sample_rate_hz": round(base.rate_hz, 4),
                "stamp_residual_us": round(base.residual_s * 1e6, 3),
                "rejected_blocks": base.rejected_blocks,
                "lost_s": round(base.lost_samples / base.rate_hz, 3),
                "gps_fix_age_s": base.fix_age_s,
                "frequency_offset_hz": round(float(offset), 2) + 0.0
                if np.isfinite(offset)
                else None,
            }
            for station, base, offset in zip(stations, solution.timebases, offsets, strict=True)
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
        "fit_chi2_bound": round(solution.chi2_bound, 3),
        "sigma_scale": round(math.sqrt(likelihood.widened), 3),
        "excluded": [
            {"id": stations[k].id, "cause": "unheard", "reason": NO_COMMON_SIGNAL}
            for k in solution.unheard
        ]
        + (
            []
            if odd is None
            else [
                {
                    "id": stations[odd.index].id,
                    "cause": "disagrees",
                    "reason": (
                        f"its delays disagree with the others': the fit's chi2 was "
                        f"{odd.chi2_with:,.1f} with it (a right position exceeds "
                        f"{odd.bound_with:.1f} one time in a thousand), {likelihood.chi2:.1f} "
                        "without it; is its GPS time or its position right?"
                    ),
                }
            ]
        ),
        "weight": round(likelihood.weight, 4),
        "chosen_by": likelihood.chosen_by,
        "alternatives": [
            {**describe(o), "weight": round(w, 4), "among_receivers": inside}
            for (o, w), inside in zip(likelihood.alternatives, likelihood.among[1:], strict=True)
        ],
        "cautions": [
            c
            for c in [
                skywave_caution(solution, stations, frequency_mhz),
                unused_caution(solution, stations),
            ]
            if c
        ],
        "likelihood_contours": contour_features(
            likelihood.lats, likelihood.lons, likelihood.log_likelihood
        ),
    }
