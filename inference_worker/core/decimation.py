"""Decimation of fast captures before their spectrogram (pure numpy/scipy).

A capture sampled much faster than the analysis band needs is low-passed and decimated first, so
the spectrogram's cost does not grow with the sample rate beyond reading the samples once. The
filter passes everything the features look at (the analysis band, widened by how far the band
may follow a receiver's carrier) and stops what would fold into it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

ALIAS_REJECTION_DB = 58.0
"""Everything that folds onto the offsets the features read is kept at least this far below
its true level: the filter is made long enough to be in its stopband (a Kaiser window of β 6,
sidelobes ~63 dB down) where the first alias begins."""
KAISER_BETA = 6.0
LEAST_TAPS_PER_PHASE = 6
ROW_SAMPLES = 64
"""About how many input samples make one row of the decimation's matrix product: rows of a few
samples (a small factor) leave the product little to sum and many partial sums to add up."""
LEAST_OUTPUTS_PER_ROW = 7
"""Rows of fewer outputs than this (factors above 9) do not repay copying the capture into
planes of real and imaginary parts: such a capture is read in rows of one output, in place."""


def decimation_factor(sample_rate_hz: float, reach_hz: float, transition_hz: float) -> int:
    """By how much a capture is decimated: the largest integer that keeps the new rate at least
    twice ``reach_hz`` (the farthest offset the features look at) plus ``transition_hz`` for the
    filter to fall from pass to stop (1: not at all)."""
    return max(1, int(sample_rate_hz // (2.0 * reach_hz + transition_hz)))


def transition_hz(bandwidth_hz: float, following: bool) -> float:
    """Room left to the anti-alias filter: a whole analysis band for a fixed band; half of one
    when the band follows the carrier (the filter is longer, and a larger factor keeps the
    polyphase product efficient)."""
    return bandwidth_hz / 2.0 if following else bandwidth_hz


@lru_cache(maxsize=64)
def taps_per_phase(sample_rate_hz: float, factor: int, reach_hz: float) -> int:
    """Filter taps per output of a decimation by ``factor``: the fewest whose low-pass keeps what
    folds onto ``±reach_hz`` :data:`ALIAS_REJECTION_DB` down. The room between the band read and
    its first alias decides: at 192 kHz (factor 5, band following) 13, at 96 kHz 10, at 2.4 MHz
    20, where a fixed length left aliases 12 dB down."""
    room = sample_rate_hz / factor - 2.0 * reach_hz
    # Start from Kaiser's estimate of the length for the window's attenuation (within a tap or
    # two a phase of the answer), then step to the fewest that hold.
    attenuation = KAISER_BETA / 0.1102 + 8.7
    estimate = (attenuation - 7.95) / (14.36 * room / sample_rate_hz) + 1.0
    count = max(LEAST_TAPS_PER_PHASE, math.ceil(estimate / factor) - 2)

    def holds(taps: int) -> bool:
        return _alias_gain_db(sample_rate_hz, factor, taps, reach_hz) <= -ALIAS_REJECTION_DB

    if holds(count):
        while count > LEAST_TAPS_PER_PHASE and holds(count - 1):
            count -= 1
        return count
    while not holds(count):
        count += 1
    return count


def _lowpass(sample_rate_hz: float, factor: int, count: int) -> np.ndarray:
    """``count × factor`` taps of a Kaiser-windowed low-pass cut at half the new rate."""
    import scipy.signal  # loaded when first needed (see ``features.frame_window``)

    cutoff = (sample_rate_hz / factor / 2.0) / (sample_rate_hz / 2.0)
    return scipy.signal.firwin(count * factor, cutoff, window=("kaiser", KAISER_BETA))


def _alias_gain_db(sample_rate_hz: float, factor: int, count: int, reach_hz: float) -> float:
    """The filter's largest gain over the first band that folds onto ``±reach_hz`` (the nearest
    to its passband, so the worst: further alias bands lie deeper in the decaying sidelobes),
    read from one FFT fine enough to put ~256 points in that band."""
    h = _lowpass(sample_rate_hz, factor, count)
    out_rate = sample_rate_hz / factor
    points = 1 << math.ceil(math.log2(max(h.size, 128.0 * sample_rate_hz / reach_hz)))
    gain = np.abs(np.fft.rfft(h, points))
    freqs = np.arange(gain.size) * (sample_rate_hz / points)
    band = (freqs >= out_rate - reach_hz) & (freqs <= out_rate + reach_hz)
    return float(20.0 * np.log10(gain[band].max() + 1e-300))


@lru_cache(maxsize=32)
def decimation_filter(sample_rate_hz: float, factor: int, reach_hz: float) -> np.ndarray:
    """The anti-alias FIR ``h`` of a decimation by ``factor`` (:func:`taps_per_phase` ×
    ``factor`` taps, read-only), cut at half the new rate: it passes the offsets the features
    read (``±reach_hz``) and stops what would fold onto them."""
    h = _lowpass(sample_rate_hz, factor, taps_per_phase(sample_rate_hz, factor, reach_hz))
    h.flags.writeable = False
    return h


@dataclass(frozen=True, eq=False)  # holds an array: compared by identity
class Decimator:
    """A decimation by ``factor`` as one matrix product: the capture is cut into rows of
    ``outputs_per_row × factor`` samples, and ``weights[c, s, i]`` weighs sample ``c`` of the
    row ``s`` rows back in output ``i`` of the current row."""

    factor: int
    taps: int
    outputs_per_row: int
    weights: np.ndarray

    @property
    def rows_back(self) -> int:
        """How many rows back a row's outputs still read."""
        return int(self.weights.shape[1])


@lru_cache(maxsize=32)
def decimator(sample_rate_hz: float, factor: int, reach_hz: float) -> Decimator:
    """The decimation by ``factor`` of :func:`decimation_filter`, laid out for
    :func:`decimate`."""
    h = decimation_filter(sample_rate_hz, factor, reach_hz)
    per_row = round(ROW_SAMPLES / factor)
    if per_row < LEAST_OUTPUTS_PER_ROW:
        per_row = 1
    row = per_row * factor
    rows_back = (h.size - 1 - factor + row) // row + 1
    # Output m = q·per_row + i reads y[m] = sum_j h[j] x[m·factor + factor - 1 - j]; sample c of
    # row q - s is x[(q - s)·row + c], so its tap is j = s·row + i·factor + factor - 1 - c.
    c = np.arange(row)[:, None, None]
    s = np.arange(rows_back)[None, :, None]
    i = np.arange(per_row)[None, None, :]
    j = s * row + i * factor + factor - 1 - c
    inside = (j >= 0) & (j < h.size)
    weights = np.where(inside, h[np.clip(j, 0, h.size - 1)], 0.0).astype(np.float32)
    weights.flags.writeable = False
    return Decimator(factor, h.size, per_row, weights)


def decimate(iq: np.ndarray, plan: Decimator) -> np.ndarray:
    """Low-pass and keep every ``factor``-th sample: one matrix product over the capture and a
    few sums of its partial results, so the cost is a few operations a sample whatever the
    factor. The first outputs, before the filter has a whole history, are dropped."""
    n_rx, n = iq.shape
    factor, per_row, rows_back = plan.factor, plan.outputs_per_row, plan.rows_back
    row = per_row * factor
    first = plan.taps // factor - 1  # the first output with a whole history
    count = n // factor - first
    if count <= 0:  # shorter than the filter: nothing whole to keep (the caller says too short)
        return np.empty((n_rx, 0), np.complex64)
    if per_row == 1:
        return _decimate_rows_of_one(iq[:, : n // factor * factor], plan, count)
    rows = -(-(count + (rows_back - 1) * per_row) // per_row)
    start = (first - (rows_back - 1) * per_row) * factor  # where row 0 starts (< 0: padded)
    # Real and imaginary parts as rows of single floats, the ends padded with zeros (only the
    # pads are cleared: zeroing the whole array first cost as much as a third of the copy).
    planes = np.empty((2, n_rx, rows * row), np.float32)
    lo, skip = max(start, 0), max(-start, 0)
    taken = min(n - lo, rows * row - skip)
    planes[:, :, :skip] = 0.0
    planes[:, :, skip + taken :] = 0.0
    planes[0, :, skip : skip + taken] = iq.real[:, lo : lo + taken]
    planes[1, :, skip : skip + taken] = iq.imag[:, lo : lo + taken]
    partial = planes.reshape(-1, row) @ plan.weights.reshape(row, -1)
    partial = partial.reshape(2 * n_rx, rows, rows_back, per_row)
    out = partial[:, rows_back - 1 :, 0, :].copy()
    for back in range(1, rows_back):
        out += partial[:, rows_back - 1 - back : rows - back, back, :]
    out = out.reshape(2, n_rx, -1)[:, :, :count]
    decimated = np.empty((n_rx, count), np.complex64)
    decimated.real, decimated.imag = out[0], out[1]
    return decimated


def _decimate_rows_of_one(iq: np.ndarray, plan: Decimator, count: int) -> np.ndarray:
    """Large factors: rows of one output each, taken straight from the complex capture (no
    copy), each lag's partial sums contiguous so that adding them up reads memory in order."""
    n_rx, n = iq.shape
    lags = plan.rows_back
    x = iq.reshape(n_rx, n // plan.factor, plan.factor)
    partial = plan.weights[:, :, 0].T.astype(np.complex64) @ x.transpose(0, 2, 1)
    out = partial[:, 0, lags - 1 :].copy()
    for lag in range(1, lags):
        out += partial[:, lag, lags - 1 - lag : lags - 1 - lag + count]
    return out


def decimation_gain(
    sample_rate_hz: float, factor: int, reach_hz: float, freqs: np.ndarray
) -> np.ndarray:
    """Power gain of the decimation filter at ``freqs`` (Hz offsets), to undo."""
    import scipy.signal  # loaded when first needed (see ``features.frame_window``)

    h = decimation_filter(sample_rate_hz, factor, reach_hz)
    _, response = scipy.signal.freqz(h, worN=freqs, fs=sample_rate_hz)
    return np.abs(response) ** 2
