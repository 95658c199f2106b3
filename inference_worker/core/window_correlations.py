"""Every pair's delay and correlation value in each window of a set of recordings, kept for the
set located again without some of its receivers: pure numpy.

A receiver that hears nothing in common with the others is found only once every pair has been
correlated (:func:`~inference_worker.core.time_differences.pair_delays`), and the set is then
located again without it (:func:`~inference_worker.core.tdoa.solve`). Where the others' windows
lie where they lay (the same common span, window length and margin: leaving a receiver out
often changes none of them), each of their pairs' windows would be correlated again exactly as
before; they are taken from what was kept instead, and only the pairs not kept are correlated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from inference_worker.core.correlation_peaks import peak_delays, stretches_at
from inference_worker.core.kiwi_wav import KiwiRecording, Timebase

KnownWindows = dict[tuple[object, ...], tuple[np.ndarray, np.ndarray]]
"""A pair's windows' delays and correlation values, by where the windows lie, which recordings
and time bases the pair's are, and the two receivers' frequency offsets."""


@dataclass(frozen=True, eq=False)  # holds arrays
class WindowLayout:
    """Where a set's windows lie on GPS time: ``length`` samples and ``margin`` either side,
    centred on ``centres`` (every slot of the common span from ``start_s``), of which those
    ``present`` are correlated (every recording's blocks arrived there) and those ``searched``
    cut for the frequency search."""

    start_s: float
    centres: Sequence[float]
    present: np.ndarray
    searched: np.ndarray
    length: int
    margin: int

    def key(self) -> tuple[object, ...]:
        return (self.start_s, tuple(self.centres), tuple(self.present), self.length, self.margin)


class WindowCorrelations:
    """Each pair's delay (seconds) in each present window and its correlation value in each
    slot (:func:`~inference_worker.core.correlation_peaks.peak_delays`), for the receivers'
    frequency offsets asked (none: as recorded). What is computed is added to ``known``, and
    what ``known`` holds already is taken from it rather than correlated again."""

    def __init__(
        self,
        recordings: Sequence[KiwiRecording],
        timebases: Sequence[Timebase],
        layout: WindowLayout,
        pairs: Sequence[tuple[int, int]],
        max_lags_s: np.ndarray,
        rates_hz: np.ndarray,
        known: KnownWindows | None = None,
    ) -> None:
        self.recordings, self.timebases, self.layout = recordings, timebases, layout
        self.pairs, self.max_lags_s, self.rates_hz = pairs, max_lags_s, rates_hz
        self.known: KnownWindows = {} if known is None else known
        self._where = layout.key()
        self.searched: list[list[np.ndarray]] = []
        """Every receiver's stretches of the searched windows, as recorded (filled by the
        first call without offsets)."""

    def __call__(self, offsets_hz: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(pairs, present windows)`` delays and ``(pairs, slots)`` correlation values (0
        where a window is not present)."""
        layout = self.layout
        per_window = np.empty((len(self.pairs), len(layout.present)))
        values = np.zeros((len(self.pairs), len(layout.centres)), complex)
        keys = [self._key(row, offsets_hz) for row in range(len(self.pairs))]
        todo = [row for row, key in enumerate(keys) if key not in self.known]
        if todo:
            self._correlate(todo, [keys[row] for row in todo], offsets_hz)
        for row, key in enumerate(keys):
            per_window[row], values[row, layout.present] = self.known[key]
        if offsets_hz is None and not self.searched:  # every pair known: cut them alone
            every = range(len(self.recordings))
            self.searched = [self._cut(every, k, None)[0] for k in layout.searched]
        return per_window, values

    def _key(self, row: int, offsets_hz: np.ndarray | None) -> tuple[object, ...]:
        a, b = self.pairs[row]
        offsets = (0.0, 0.0) if offsets_hz is None else (float(offsets_hz[a]), float(offsets_hz[b]))
        recordings, bases = self.recordings, self.timebases
        ids = (id(recordings[a]), id(recordings[b]), id(bases[a]), id(bases[b]))
        lags = (float(self.max_lags_s[row]), float(self.rates_hz[row]))
        return (self._where, ids, lags, offsets_hz is None, offsets)

    def _cut(
        self, receivers: Sequence[int], slot: int, offsets_hz: np.ndarray | None
    ) -> tuple[list[np.ndarray], np.ndarray]:
        layout = self.layout
        return stretches_at(
            [self.recordings[k] for k in receivers],
            [self.timebases[k] for k in receivers],
            layout.centres[slot],
            layout.length + 2 * layout.margin,
            None if offsets_hz is None else offsets_hz[list(receivers)],
            layout.start_s,
        )

    def _correlate(
        self, todo: list[int], keys: list[tuple[object, ...]], offsets_hz: np.ndarray | None
    ) -> None:
        """Correlate the pairs of rows ``todo`` in every present window (only their receivers'
        stretches cut), and add what they give to what is known under their ``keys``."""
        layout = self.layout
        receivers = sorted({k for row in todo for k in self.pairs[row]})
        local = {k: i for i, k in enumerate(receivers)}
        pairs = [(local[self.pairs[row][0]], local[self.pairs[row][1]]) for row in todo]
        found = np.empty((len(todo), len(layout.present)))
        turns = np.empty((len(todo), len(layout.present)), complex)
        search = offsets_hz is None and len(receivers) == len(self.recordings)
        for column, k in enumerate(layout.present):
            stretches, fractions = self._cut(receivers, k, offsets_hz)
            found[:, column], turns[:, column] = peak_delays(
                stretches,
                pairs,
                layout.margin,
                self.rates_hz[todo],
                self.max_lags_s[todo],
                fractions,
            )
            if search and k in layout.searched:
                self.searched.append(stretches)
        for i, key in enumerate(keys):
            self.known[key] = (found[i], turns[i])
