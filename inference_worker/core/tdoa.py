"""Locating an emitter from one KiwiSDR IQ WAV file per receiver: :func:`solve` reads the files
and their time bases (:mod:`inference_worker.core.kiwi_wav`), finds the pairs' delays
(:mod:`inference_worker.core.time_differences`), locates the emitter
(:mod:`inference_worker.core.tdoa_locate`) and copes with receivers that do not fit: one that
hears no signal in common with the others is left out, as is one whose delays disagree with
the others', and delays that agree with no one position widen their uncertainties to fit.
:mod:`inference_worker.core.tdoa_results` describes the solution as a job's result.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from inference_worker.core.contract import Receiver
from inference_worker.core.ellipse import Estimate, contains
from inference_worker.core.geodesy import SPEED_OF_LIGHT_M_S
from inference_worker.core.kiwi_wav import (
    KiwiRecording,
    KiwiWavError,
    Timebase,
    read_kiwi_wav,
    timebase,
)
from inference_worker.core.recording_sets import (
    block_prints,
    overlap,
    repeated_recording,
    too_few_sites,
)
from inference_worker.core.tdoa_kinds import Expectation, Propagation
from inference_worker.core.tdoa_locate import Likelihood, locate
from inference_worker.core.tdoa_search import misfit_factor
from inference_worker.core.tdoa_skywave import (
    PATH_SPREAD_M,
    Fit,
    layer_fits,
    same_place,
)
from inference_worker.core.time_differences import (
    NO_COMMON_SIGNAL,
    DeafReceivers,
    Delays,
    TdoaError,
    pair_delays,
)
from inference_worker.core.window_correlations import KnownWindows

DECISIVE_CHI2 = 2 * math.log(100.0)
"""How much worse (in chi2) another receiver's exclusion must fit for one to be left out: a
likelihood 100 times smaller."""


@dataclass(frozen=True)
class Excluded:
    """A receiver left out because the others agree without it and not with it."""

    index: int
    chi2_with: float
    bound_with: float


@dataclass(frozen=True)
class Solution:
    estimate: Estimate
    likelihood: Likelihood
    pairs: Delays
    timebases: list[Timebase]
    overlap_s: float
    excluded: Excluded | None = None
    unheard: tuple[int, ...] = ()
    """Receivers left out as sharing no signal with the others (the rest located without
    them); ``pairs`` has none of theirs."""

    @property
    def left_out(self) -> set[int]:
        """Every receiver the position does not rest on: unheard, or its delays disagreeing."""
        return {*self.unheard, *([] if self.excluded is None else [self.excluded.index])}

    @property
    def chi2_bound(self) -> float:
        """The fit's chi2 that a right position exceeds one time in a thousand."""
        return self.likelihood.chi2_bound

    def holds(self, lat: float, lon: float, confidence: float) -> bool:
        """Whether a point lies in the ellipse at ``confidence`` of the estimate or of one of
        its alternatives (their union is the confidence region)."""
        places = [self.estimate, *(other for other, _ in self.likelihood.alternatives)]
        return any(contains(place, lat, lon, confidence) for place in places)

    def renumbered(
        self, numbers: Sequence[int], timebases: list[Timebase], unheard: Sequence[int]
    ) -> Solution:
        """This solution, found among some receivers (``numbers``: each one's index among all),
        numbered among all: ``timebases`` every one's, ``unheard`` the ones left out."""
        odd = self.excluded
        return dataclasses.replace(
            self,
            pairs=self.pairs.renumbered(numbers, len(timebases)),
            timebases=timebases,
            excluded=None if odd is None else dataclasses.replace(odd, index=numbers[odd.index]),
            unheard=tuple(sorted({*unheard, *(numbers[k] for k in self.unheard)})),
        )


def solve(
    files: Sequence[bytes],
    stations: Sequence[Receiver],
    *,
    min_overlap_s: float = 2.0,
    expect: Expectation = "anywhere",
    propagation: Propagation = "ground",
) -> Solution:
    """Locate the emitter heard in one KiwiSDR IQ WAV file per station (in the same order).

    Delays that agree with no one position leave out the one receiver to blame when there is
    one, and otherwise widen their uncertainties until they fit. ``expect``: where the emitter
    is expected, which decides between places that explain the delays alike (:func:`locate`).
    ``propagation``: ``skywave`` locates with paths by one hop off a layer of every height of
    :data:`~inference_worker.core.tdoa_skywave.LAYER_HEIGHTS_M` and mixes them
    (:func:`_mixed`).

    Raises:
        TdoaError: a file is unusable (no GPS time, not a KiwiSDR IQ recording; the message
            names the receiver), one recording sent for two receivers, fewer than 3 receivers or
            places, too short a common span, or delays that fix a line rather than a point.
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
    problem = repeated_recording(stations, [block_prints(r) for r in recordings])
    if problem:
        raise TdoaError(problem)
    return _solved(recordings, bases, stations, min_overlap_s, expect, stations, propagation)


def _solved(
    recordings: Sequence[KiwiRecording],
    bases: list[Timebase],
    stations: Sequence[Receiver],
    min_overlap_s: float,
    expect: Expectation,
    hull: Sequence[Receiver],
    propagation: Propagation = "ground",
    known: KnownWindows | None = None,
) -> Solution:
    """:func:`solve` once the files are read; receivers that hear no signal in common with the
    others are left out while three or more remain at three places or more (the others' pairs'
    windows ``known`` from the first correlation, where they lie as they lay)."""
    known = {} if known is None else known
    try:
        pairs = pair_delays(recordings, bases, stations, min_overlap_s=min_overlap_s, known=known)
    except DeafReceivers as deaf:
        heard = [k for k in range(len(stations)) if k not in deaf.receivers]
        if len(heard) < 3 or too_few_sites([stations[k] for k in heard]):
            raise
        try:
            part = _solved(
                [recordings[k] for k in heard],
                [bases[k] for k in heard],
                [stations[k] for k in heard],
                min_overlap_s,
                expect,
                hull,
                propagation,
                known,
            )
        except DeafReceivers as more:  # too few left once more were left out: name them all
            unheard = sorted({*deaf.receivers, *(heard[k] for k in more.receivers)})
            names = ", ".join(stations[k].id for k in unheard)
            raise DeafReceivers(f"receiver(s) {names}: {NO_COMMON_SIGNAL}", unheard) from None
        return part.renumbered(heard, bases, deaf.receivers)
    start, end = overlap(bases)
    if propagation == "skywave":
        spread = pairs.with_receiver_spread(PATH_SPREAD_M / SPEED_OF_LIGHT_M_S, len(stations))
        likeliest, fits = layer_fits(stations, spread, expect, hull)
        return _mixed(_fitted(stations, spread, bases, end - start, expect, hull, likeliest), fits)
    return _fitted(stations, pairs, bases, end - start, expect, hull)


def _fitted(
    stations: Sequence[Receiver],
    pairs: Delays,
    bases: list[Timebase],
    span_s: float,
    expect: Expectation,
    hull: Sequence[Receiver],
    located: tuple[Estimate, Likelihood] | None = None,
) -> Solution:
    """The delays located (along the ground, or ``located`` already: a skywave height's fit),
    the one receiver to blame left out, or their uncertainties widened to fit (at the
    fit's layer height)."""
    estimate, likelihood = located or locate(stations, pairs, expect=expect, hull=hull)
    solution = Solution(estimate, likelihood, pairs, bases, span_s)
    if likelihood.chi2 > likelihood.chi2_bound and len(stations) >= 5:
        solution = _without_the_odd_one(solution, stations, expect, hull)
    if solution.likelihood.chi2 > solution.chi2_bound:
        return _widened_to_fit(solution, stations, expect, hull)
    return solution


def _mixed(solution: Solution, fits: list[tuple[float, Fit]]) -> Solution:
    """Skywave: the solution at the likeliest layer height (a receiver left out or the
    uncertainties widened there as with ground wave), its estimate the mixture of the same
    place over the heights the delays leave likely (``fits``, :mod:`~inference_worker.core.
    tdoa_skywave`); not mixed where the likeliest height's fit left a receiver out or widened
    (the other heights' fits rest on other receivers or weights)."""
    if solution.excluded is not None or solution.likelihood.widened > 1:
        return solution
    others = [place for place, _ in solution.likelihood.alternatives]
    heights = np.array([fit[1].layer_height_m for _, fit in fits])
    weights = np.array([weight for weight, _ in fits])
    mean = float(weights @ heights)
    likelihood = dataclasses.replace(
        solution.likelihood,
        layer_height_m=mean,
        layer_height_sd_m=float(np.sqrt(weights @ (heights - mean) ** 2)),
    )
    estimate = same_place(solution.estimate, others, fits)
    return dataclasses.replace(solution, estimate=estimate, likelihood=likelihood)


def _widened_to_fit(
    solution: Solution,
    stations: Sequence[Receiver],
    expect: Expectation = "anywhere",
    hull: Sequence[Receiver] | None = None,
) -> Solution:
    """The solution with every delay's variance multiplied by how much worse the delays fit
    than their uncertainties allow, so that delays agreeing with no one position (and no one
    receiver to blame) give regions as wide as their disagreement, not falsely small ones
    (:func:`~inference_worker.core.tdoa_search.misfit_factor`)."""
    chi2, bound, at = solution.likelihood.chi2, solution.chi2_bound, solution.estimate
    height = solution.likelihood.layer_height_m
    measured = solution.pairs.precision()
    factor = misfit_factor(stations, solution.pairs, measured, at.lat, at.lon, height)
    try:
        estimate, likelihood = locate(
            stations,
            solution.pairs,
            precision=measured / factor,
            expect=expect,
            hull=hull,
            layer_height_m=height,
        )
    except TdoaError:
        raise TdoaError(
            f"the delays agree with no one position (the fit's chi2 {chi2:,.1f}; a right "
            f"position exceeds {bound:.1f} one time in a thousand) and no one receiver's "
            f"exclusion explains it; their uncertainties widened ×{math.sqrt(factor):.1f} to "
            "fit leave a region wider than the area searched: is each receiver's GPS time and "
            "position right?"
        ) from None
    likelihood = dataclasses.replace(likelihood, chi2=chi2, widened=factor)
    return dataclasses.replace(solution, estimate=estimate, likelihood=likelihood)


def _without_the_odd_one(
    solution: Solution,
    stations: Sequence[Receiver],
    expect: Expectation = "anywhere",
    hull: Sequence[Receiver] | None = None,
) -> Solution:
    """The solution without the one receiver whose delays disagree with the others': the
    others fit a position plausibly without it, and leaving out any other receiver fits
    implausibly or at least 100 times less likely (a receiver's time or position wrong).
    Otherwise ``solution`` as it is. Four or more must remain: any three fit some position."""
    fits, height = [], solution.likelihood.layer_height_m
    for k in range(len(stations)):
        rest = [s for i, s in enumerate(stations) if i != k]
        subset = solution.pairs.without(k)
        try:
            fits.append(
                (
                    k,
                    *locate(
                        rest, subset, expect=expect, hull=hull or stations, layer_height_m=height
                    ),
                )
            )
        except TdoaError:
            continue
    fits.sort(key=lambda fit: fit[2].chi2)
    if not fits or fits[0][2].chi2 > fits[0][2].chi2_bound:
        return solution
    best = fits[0][2].chi2
    if any(f.chi2 <= f.chi2_bound and f.chi2 - best < DECISIVE_CHI2 for _, _, f in fits[1:]):
        return solution
    k, estimate, likelihood = fits[0]
    odd = Excluded(k, solution.likelihood.chi2, solution.chi2_bound)
    return dataclasses.replace(solution, estimate=estimate, likelihood=likelihood, excluded=odd)
