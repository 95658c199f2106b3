"""Each pair's delay over one window: the receivers' windows cross-correlated, each peak found
on whole samples and refined below a sample (band-limited interpolation, then a parabola).
The windows are cut here too (:func:`stretches_at`: at whole samples, what each starts off
GPS time taken out of the delays); pure numpy and scipy.
:mod:`inference_worker.core.time_differences` turns their delays into the pairs' delays and
covariance."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import scipy.fft

from inference_worker.core.kiwi_wav import KiwiRecording, Timebase
from inference_worker.core.recording_sets import TdoaError

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
    fractions: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each pair ``(a, b)``'s delay of ``a`` behind ``b`` (seconds) over one window, from every
    receiver's ``stretch``: the window and ``margin`` samples either side; and the complex
    correlation at each peak (its phase turns from window to window where the two receivers'
    frequencies differ). ``fractions``: how far past each stretch's first sample its window
    starts on GPS time (samples, :func:`stretches_at`), taken out of the pairs' delays.

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
    values = np.empty(len(pairs), dtype=complex)
    for at in range(0, len(pairs), _PAIRS_AT_ONCE):
        some = slice(at, at + _PAIRS_AT_ONCE)
        correlation = scipy.fft.ifft(spectra[first[some]] * others[second[some]])
        limits = np.minimum(max_lags_s[some] * rates_hz[some], margin)
        lags, values[some] = _refined_peaks(correlation, limits)
        delays[some] = lags / rates_hz[some]
    if fractions is not None:
        delays -= (fractions[first] - fractions[second]) / rates_hz
    return delays, values


def _refined_peaks(correlation: np.ndarray, limits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's lag (samples) at its correlation's peak within ``limits``, and the complex
    correlation there: found on whole samples, then the band-limited correlation evaluated
    ``UPSAMPLE`` times finer within a sample either side and a parabola fitted to the finest
    peak (the values of interpolating the whole correlation, for a fraction of the work)."""
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
    values = turned @ _fine_kernel(n).T
    fine = np.abs(values)
    rows = np.arange(len(correlation))
    index = np.clip(np.argmax(fine, axis=1), 1, fine.shape[1] - 2)
    left, centre, right = fine[rows, index - 1], fine[rows, index], fine[rows, index + 1]
    denominator = left - 2 * centre + right
    flat = denominator == 0
    offset = np.where(flat, 0.0, 0.5 * (left - right) / np.where(flat, 1.0, denominator))
    return peaks + (index - UPSAMPLE + offset) / UPSAMPLE, values[rows, index]


@functools.lru_cache(maxsize=16)
def _fine_kernel(n: int) -> np.ndarray:
    """The matrix that turns an ``n``-point correlation, its peak first, into its band-limited
    values at lags ``-1, -1 + 1/UPSAMPLE, ..., +1`` samples from the peak: row ``s`` is the
    transform of the phase ramp of lag ``s``, so that each value is the cross-spectrum's
    ``sum(C[f] exp(2 pi i f (peak + s)))`` without a ramp to compute for every peak."""
    steps = np.arange(-UPSAMPLE, UPSAMPLE + 1) / UPSAMPLE
    return np.fft.fft(np.exp(2j * np.pi * np.outer(steps, np.fft.fftfreq(n))), axis=1)


def stretches_at(
    recordings: Sequence[KiwiRecording],
    timebases: Sequence[Timebase],
    centre_s: float,
    size: int,
    offsets_hz: np.ndarray | None = None,
    epoch_s: float = 0.0,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Every receiver's ``size`` samples centred on GPS time ``centre_s`` (:func:`_window`), and
    how far past each one's first sample the window starts on GPS time (a fraction of a sample):
    the stretches are cut at whole samples, and :func:`peak_delays` takes the fractions out of
    the delays, which is what shifting each stretch onto GPS time would give, for none of the
    work. Each is turned back by its frequency offset where one is given: by the phase its
    offset gathers from GPS time ``epoch_s`` on (at its samples' own times), so that a window's
    correlation no longer turns against the next one's either."""
    cut = [_window(r, tb, centre_s, size) for r, tb in zip(recordings, timebases, strict=True)]
    stretches = [stretch for stretch, _ in cut]
    fractions = np.array([fraction for _, fraction in cut])
    if offsets_hz is not None:
        for stretch, base, offset, fraction in zip(
            stretches, timebases, offsets_hz, fractions, strict=True
        ):
            since = centre_s - epoch_s + (np.arange(size) - size / 2 - fraction) / base.rate_hz
            stretch *= np.exp(-2j * np.pi * offset * since)
    return stretches, fractions


def arrived(base: Timebase, centre_s: float, length: int) -> bool:
    """Whether all of what :func:`_window` takes of a recording for a window arrived: none of
    it where blocks were lost on the way."""
    first, _ = _placed(base, centre_s, length)
    return base.recorded(first, first + length) is not None


def _placed(base: Timebase, centre_s: float, length: int) -> tuple[int, float]:
    """Where a window of ``length`` samples centred on GPS time ``centre_s`` starts: the whole
    sample, and the fraction of a sample beyond it."""
    position = (centre_s - base.t0_s) * base.rate_hz - length / 2
    first = int(math.floor(position))
    return first, position - first


def _window(
    recording: KiwiRecording, base: Timebase, centre_s: float, length: int
) -> tuple[np.ndarray, float]:
    """``length`` raw samples of one receiver, from the last one at or before the GPS time
    where a window centred on ``centre_s`` starts, and how far before it that sample lies (a
    fraction of a sample).
    Centring matters: receivers' rates differ by parts per million, which would skew windows
    that start together by microseconds at their far end; centred, the skew averages out."""
    first, fraction = _placed(base, centre_s, length)
    start = base.recorded(first, first + length)
    if start is None:
        raise TdoaError("a window reaches where blocks of a recording were lost")
    samples = recording.iq[start : start + length].astype(np.complex128)
    if start < 0 or len(samples) < length:
        raise TdoaError("a window reaches past the end of a recording")
    return samples, fraction
