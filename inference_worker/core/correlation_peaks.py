"""Each pair's delay over one window: the receivers' windows cross-correlated, each peak found
on whole samples and refined below a sample (band-limited interpolation, then a parabola).
Pure numpy and scipy; :mod:`inference_worker.core.time_differences` cuts the windows and turns
their delays into the pairs' delays and covariance."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import scipy.fft

UPSAMPLE = 16
"""The cross-correlation is interpolated this many times finer than a sample."""
_PAIRS_AT_ONCE = 64
"""Pairs correlated together (the 2 016 pairs of 64 receivers at once held about a gigabyte)."""


def peak_delays(
    stretches: Sequence[np.ndarray],
    pairs: Sequence[tuple[int, int]],
    margin: int,
    rates_hz: np.ndarray,
    max_lags_s: np.ndarray,
) -> np.ndarray:
    """Each pair ``(a, b)``'s delay of ``a`` behind ``b`` (seconds) over one window, from every
    receiver's ``stretch``: the window and ``margin`` samples either side.

    ``a``'s window (its stretch's middle) is correlated against ``b``'s whole stretch, so at
    every lag searched (at most ``margin``) each sample of the window meets one of the other;
    two windows of one length would share less the larger the lag, pulling a broad peak (a
    slowly keyed signal) towards zero. Each receiver's spectra are taken once for all its pairs,
    the correlations :data:`_PAIRS_AT_ONCE` pairs at a time.
    """
    whole = np.asarray(stretches)
    # Zeros after both, to a length whose FFT is quick: no lag searched wraps around.
    n = scipy.fft.next_fast_len(whole.shape[1])
    middles = np.zeros((len(whole), n), dtype=complex)
    middles[:, margin : whole.shape[1] - margin] = whole[:, margin : whole.shape[1] - margin]
    spectra, others = scipy.fft.fft(middles), np.conj(scipy.fft.fft(whole, n))
    first, second = np.asarray(pairs).T
    delays = np.empty(len(pairs))
    for at in range(0, len(pairs), _PAIRS_AT_ONCE):
        some = slice(at, at + _PAIRS_AT_ONCE)
        correlation = scipy.fft.ifft(spectra[first[some]] * others[second[some]])
        limits = np.minimum(max_lags_s[some] * rates_hz[some], margin)
        delays[some] = _refined_peaks(correlation, limits) / rates_hz[some]
    return delays


def _refined_peaks(correlation: np.ndarray, limits: np.ndarray) -> np.ndarray:
    """Each row's lag (samples) at its correlation's peak within ``limits``: found on whole
    samples, then the band-limited correlation evaluated ``UPSAMPLE`` times finer within a
    sample either side and a parabola fitted to the finest peak (the values of interpolating the
    whole correlation, for a fraction of the work)."""
    n = correlation.shape[1]
    # Only the lags searched, in the transform's order (0, 1, ..., then the negative ones).
    reach = min(int(math.ceil(float(limits.max()))), (n - 1) // 2)
    columns = np.r_[0 : reach + 1, n - reach : n]
    lags = np.fft.fftfreq(n, d=1.0 / n).astype(int)[columns]  # whole samples, signed
    allowed = np.abs(lags) <= limits[:, None]
    searched = np.abs(correlation[:, columns])
    peaks = lags[np.argmax(np.where(allowed, searched, -1.0), axis=1)]
    # Each pair's correlation turned so that its peak comes first, then the fine lags' values.
    turned = np.empty_like(correlation)
    for row, start in enumerate(peaks % n):
        turned[row, : n - start] = correlation[row, start:]
        turned[row, n - start :] = correlation[row, :start]
    fine = np.abs(turned @ _fine_kernel(n).T)
    rows = np.arange(len(correlation))
    index = np.clip(np.argmax(fine, axis=1), 1, fine.shape[1] - 2)
    left, centre, right = fine[rows, index - 1], fine[rows, index], fine[rows, index + 1]
    denominator = left - 2 * centre + right
    flat = denominator == 0
    offset = np.where(flat, 0.0, 0.5 * (left - right) / np.where(flat, 1.0, denominator))
    return peaks + (index - UPSAMPLE + offset) / UPSAMPLE


@functools.lru_cache(maxsize=16)
def _fine_kernel(n: int) -> np.ndarray:
    """The matrix that turns an ``n``-point correlation, its peak first, into its band-limited
    values at lags ``-1, -1 + 1/UPSAMPLE, ..., +1`` samples from the peak: row ``s`` is the
    transform of the phase ramp of lag ``s``, so that each value is the cross-spectrum's
    ``sum(C[f] exp(2 pi i f (peak + s)))`` without a ramp to compute for every peak."""
    steps = np.arange(-UPSAMPLE, UPSAMPLE + 1) / UPSAMPLE
    return np.fft.fft(np.exp(2j * np.pi * np.outer(steps, np.fft.fftfreq(n))), axis=1)
