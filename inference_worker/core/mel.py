"""The two-sided mel filters of the features (pure numpy/scipy): their corners and widths, their
weights over the centred FFT bins of the analysis band, and the pooling of a band's PSD under them.

The scale is ``2595 log10(1 + |offset| / mel_break_hz)``, applied to the offset from the tuned
frequency on both sides, so the filters are narrow near the carrier and wide towards the band's
edges (see :class:`~inference_worker.core.features.FeatureParams`).
"""

from __future__ import annotations

from collections.abc import Hashable
from functools import lru_cache
from typing import Protocol

import numpy as np
import scipy.sparse


class MelParams(Hashable, Protocol):
    """What the filters read of the features' parameters (a frozen, hashable
    :class:`~inference_worker.core.features.FeatureParams` in the service)."""

    @property
    def n_mels(self) -> int: ...
    @property
    def bandwidth_hz(self) -> float: ...
    @property
    def mel_break_hz(self) -> float: ...
    @property
    def edge_shoulders(self) -> bool: ...


def _mel(f_hz: np.ndarray, break_hz: float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + f_hz / break_hz)


def _mel_inverse(mel: np.ndarray, break_hz: float) -> np.ndarray:
    return break_hz * (10.0 ** (mel / 2595.0) - 1.0)


def mel_points_hz(params: MelParams) -> np.ndarray:
    """The ``n_mels + 2`` corner frequencies (Hz offsets) of the triangular filters."""
    mel_edge = _mel(np.array(params.bandwidth_hz / 2.0), params.mel_break_hz)
    signed_mel = np.linspace(-mel_edge, mel_edge, params.n_mels + 2)
    return np.sign(signed_mel) * _mel_inverse(np.abs(signed_mel), params.mel_break_hz)


@lru_cache(maxsize=32)
def mel_band_widths_hz(params: MelParams) -> np.ndarray:
    """Equivalent width of each filter: mean PSD x width = power in the band (cached: read on
    every job by the quality check; callers copy before changing it)."""
    points = mel_points_hz(params)
    widths = (points[2:] - points[:-2]) / 2.0
    if params.edge_shoulders:  # the outer halves are flat: a whole rectangle, not a triangle
        widths[0] += (points[1] - points[0]) / 2.0
        widths[-1] += (points[-1] - points[-2]) / 2.0
    return widths


@lru_cache(maxsize=64)
def band_bins(sample_rate_hz: float, nfft: int, half_width_hz: float) -> slice:
    """The centred (fftshift-ed) bins within ``±half_width_hz`` of the tuned frequency (cached:
    read on every capture)."""
    freqs = (np.arange(nfft) - nfft // 2) * (sample_rate_hz / nfft)
    first = int(np.searchsorted(freqs, -half_width_hz, side="left"))
    last = int(np.searchsorted(freqs, half_width_hz, side="right"))
    return slice(first, last)


@lru_cache(maxsize=32)
def mel_filterbank(sample_rate_hz: float, nfft: int, params: MelParams) -> tuple[slice, np.ndarray]:
    """Triangular two-sided mel filters over the centred FFT bins of the analysis band.

    Returns:
        The slice of centred (fftshift-ed) bins inside the band, and the weights
        ``(bins, n_mels)`` (float32, as the spectrum), each column summing to 1 so a filter yields
        a mean PSD.
    """
    band = band_bins(sample_rate_hz, nfft, params.bandwidth_hz / 2.0)
    f = (np.arange(band.start, band.stop) - nfft // 2) * (sample_rate_hz / nfft)
    points = mel_points_hz(params)
    lower, centre, upper = points[:-2, None], points[1:-1, None], points[2:, None]
    rising = (f[None, :] - lower) / (centre - lower)
    falling = (upper - f[None, :]) / (upper - centre)
    if params.edge_shoulders:
        rising[0] = 1.0  # flat from the band's lower edge to the first centre
        falling[-1] = 1.0  # and from the last centre to the upper edge
    weights = np.clip(np.minimum(rising, falling), 0.0, None)  # (n_mels, bins)
    weights[:, (f < points[0]) | (f > points[-1])] = 0.0
    sums = weights.sum(axis=1, keepdims=True)
    if np.any(sums == 0):
        raise ValueError("FFT too coarse for the mel filters; lower max_bin_hz")
    return band, np.ascontiguousarray((weights / sums).T, dtype=np.float32)


@lru_cache(maxsize=32)
def mel_pooling(sample_rate_hz: float, nfft: int, params: MelParams) -> scipy.sparse.csr_array:
    """The mel filters as a sparse ``(n_mels, bins)`` matrix: a bin lies under at most two
    triangles, so pooling is a few operations a bin where the dense product cost ~128 (it was a
    third of a 12 kHz capture's features)."""
    return scipy.sparse.csr_array(mel_filterbank(sample_rate_hz, nfft, params)[1].T)


ROW_PAD = 16
"""Spare floats at the end of each row of the band's PSD. Pooling reads the rows across, one bin
of every row at a time; rows of exactly 1 024 floats (the whole band at 12 kHz) fall on the same
cache sets and made that read four times slower."""


def band_psd_rows(n_rx: int, n_frames: int, width: int) -> np.ndarray:
    """An empty float32 ``(receivers, frames, width)`` array whose rows are padded (see
    :data:`ROW_PAD`)."""
    rows = np.empty((n_rx * n_frames, width + ROW_PAD), dtype=np.float32)
    return rows[:, :width].reshape(n_rx, n_frames, width)


def pool_mel(psd: np.ndarray, pooling: scipy.sparse.csr_array) -> np.ndarray:
    """Mean PSD under each mel filter: ``(receivers, frames, bins)`` -> ``(receivers, n_mels,
    frames)`` (the features' order)."""
    n_rx, n_frames, width = psd.shape
    pooled = pooling @ psd.reshape(n_rx * n_frames, width).T  # (n_mels, receivers x frames)
    return pooled.reshape(-1, n_rx, n_frames).transpose(1, 0, 2)
