"""Decimation of fast captures before their spectrogram (pure numpy/scipy).

A capture sampled much faster than the analysis band needs is low-passed and decimated first, so
the spectrogram's cost does not grow with the sample rate beyond reading the samples once. The
filter passes everything the features look at (the analysis band, widened by how far the band
may follow a receiver's carrier) and stops what would fold into it.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.signal

LEAST_TAPS = 48
"""Least anti-alias filter length (taps of the input rate) for a fixed analysis band."""
LEAST_TAPS_FOLLOWING = 64
"""The same when the band follows the carrier: the transition left to the filter is narrower."""


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


def taps_per_phase(factor: int, following: bool) -> int:
    least = LEAST_TAPS_FOLLOWING if following else LEAST_TAPS
    return max(6, -(-least // factor))


@lru_cache(maxsize=32)
def decimation_filter(sample_rate_hz: float, factor: int, following: bool) -> np.ndarray:
    """The anti-alias FIR of a decimation by ``factor``, as a ``(factor, taps per phase)``
    matrix (column ``l`` weighs the block of input ``l`` blocks back), cut at half the new
    rate: it passes the offsets the features read and stops what would fold onto them."""
    per_phase = taps_per_phase(factor, following)
    taps = per_phase * factor
    out_rate = sample_rate_hz / factor
    h = scipy.signal.firwin(taps, (out_rate / 2.0) / (sample_rate_hz / 2.0), window=("kaiser", 6.0))
    # y[m] = sum_j h[j] x[m f + f - 1 - j]: block m-l contributes its samples reversed.
    return np.ascontiguousarray(h.reshape(per_phase, factor)[:, ::-1].T)


def decimate(iq: np.ndarray, factor: int, weights: np.ndarray) -> np.ndarray:
    """Low-pass and keep every ``factor``-th sample: one matrix product over the capture, so the
    cost is a few operations a sample whatever the factor. The first outputs, before the filter
    has a whole history, are dropped."""
    n_rx, n = iq.shape
    blocks = n // factor
    lags = weights.shape[1]
    x = iq[:, : blocks * factor].reshape(n_rx, blocks, factor)
    # (receivers, taps per phase, blocks): each lag's row is contiguous, so the sum over lags
    # below reads memory in order (summing strided columns cost three times the product).
    partial = weights.T.astype(np.complex64) @ x.transpose(0, 2, 1)
    out = partial[:, 0, lags - 1 :].copy()
    for lag in range(1, lags):
        out += partial[:, lag, lags - 1 - lag : blocks - lag]
    return out


def decimation_gain(
    sample_rate_hz: float, factor: int, following: bool, freqs: np.ndarray
) -> np.ndarray:
    """Power gain of the decimation filter at ``freqs`` (Hz offsets), to undo."""
    weights = decimation_filter(sample_rate_hz, factor, following)
    h = weights[::-1, :].T.ravel()  # back to h[j]: weights[r, l] holds h[l f + f - 1 - r]
    _, response = scipy.signal.freqz(h, worN=freqs, fs=sample_rate_hz)
    return np.abs(response) ** 2
