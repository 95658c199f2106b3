"""Feature extraction: complex IQ from 3 receivers -> log-mel power spectral density images.

Pure numpy/scipy. For each receiver the capture is cut into ``n_frames`` equal frames; each
frame's two-sided (centred) spectrum is turned into a power spectral density in dB/Hz (so the
figures do not depend on the sample rate or the frame length), restricted to a fixed analysis
bandwidth around the tuned frequency, and pooled into ``n_mels`` triangular filters laid on a
two-sided mel scale (narrow near the carrier, wide towards the band edges).

Normalization uses fixed statistics that belong to the model (``mean_db``/``std_db``), never a
per-sample or per-channel z-score: the received-power differences between receivers are the main
location cue and must survive.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import scipy.fft
import scipy.signal

FEATURE_KIND = "log_mel_psd_db_per_hz"


@dataclass(frozen=True)
class FeatureParams:
    """How features are computed; stored in the model's metadata so the worker matches training."""

    n_mels: int = 128
    n_frames: int = 32
    bandwidth_hz: float = 12_000.0
    """Two-sided analysis band around the tuned frequency; the sample rate must cover it."""
    mel_break_hz: float = 700.0
    """Corner of the mel scale ``2595 log10(1 + f / mel_break_hz)``, applied to |offset|."""
    max_bin_hz: float = 12.0
    """Coarsest FFT bin spacing allowed; frames are zero-padded to reach it."""
    min_frame_samples: int = 16
    floor_db: float = -250.0
    """Powers below this (e.g. an all-zero channel) are clipped to it before normalization."""
    mean_db: float = -140.0
    std_db: float = 20.0

    @property
    def min_samples(self) -> int:
        """Shortest capture, in samples per receiver, that yields the fixed number of frames."""
        return self.n_frames * self.min_frame_samples

    @classmethod
    def from_metadata(cls, data: dict[str, Any]) -> FeatureParams:
        kind = data.get("kind", FEATURE_KIND)
        if kind != FEATURE_KIND:
            raise ValueError(
                f"unsupported feature kind {kind!r}; this worker computes {FEATURE_KIND!r}"
            )
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_metadata(self) -> dict[str, Any]:
        return {"kind": FEATURE_KIND, **asdict(self)}


def _mel(f_hz: np.ndarray, break_hz: float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + f_hz / break_hz)


def _mel_inverse(mel: np.ndarray, break_hz: float) -> np.ndarray:
    return break_hz * (10.0 ** (mel / 2595.0) - 1.0)


def mel_points_hz(params: FeatureParams) -> np.ndarray:
    """The ``n_mels + 2`` corner frequencies (Hz offsets) of the triangular filters."""
    mel_edge = _mel(np.array(params.bandwidth_hz / 2.0), params.mel_break_hz)
    signed_mel = np.linspace(-mel_edge, mel_edge, params.n_mels + 2)
    return np.sign(signed_mel) * _mel_inverse(np.abs(signed_mel), params.mel_break_hz)


def mel_band_widths_hz(params: FeatureParams) -> np.ndarray:
    """Equivalent width of each triangular filter: mean PSD x width = power in the band."""
    points = mel_points_hz(params)
    return (points[2:] - points[:-2]) / 2.0


DECIMATED_RATE_RATIO = 2.0
"""Captures sampled faster than this many times the analysis band are decimated to it first."""
DECIMATION_TAPS = 48
"""Least anti-alias filter length (taps of the input rate): at least 6 output samples long."""


def taps_per_phase(factor: int) -> int:
    return max(6, -(-DECIMATION_TAPS // factor))


def decimation_factor(sample_rate_hz: float, params: FeatureParams) -> int:
    """By how much a capture is decimated before its spectrogram: the largest integer that keeps
    the rate at least :data:`DECIMATED_RATE_RATIO` times the analysis band (1: not at all)."""
    return max(1, int(sample_rate_hz // (DECIMATED_RATE_RATIO * params.bandwidth_hz)))


def min_samples_at(sample_rate_hz: float, min_samples: int, bandwidth_hz: float) -> int:
    """Shortest capture, in samples per receiver at ``sample_rate_hz``, that yields the fixed
    number of frames (``min_samples`` at the analysis rate) once decimated: the decimation
    filter's first outputs are dropped."""
    factor = max(1, int(sample_rate_hz // (DECIMATED_RATE_RATIO * bandwidth_hz)))
    if factor == 1:
        return min_samples
    return (min_samples + taps_per_phase(factor) - 1) * factor


@lru_cache(maxsize=32)
def decimation_filter(sample_rate_hz: float, factor: int, params: FeatureParams) -> np.ndarray:
    """The anti-alias FIR of a decimation by ``factor``, as a ``(factor, taps per phase)``
    matrix (column ``l`` weighs the block of input ``l`` blocks back): it passes the analysis
    band and stops what would fold into it (from the new rate minus half the band)."""
    per_phase = taps_per_phase(factor)
    taps = per_phase * factor
    out_rate = sample_rate_hz / factor
    nyquist = sample_rate_hz / 2.0
    edge = (params.bandwidth_hz / 2.0 + (out_rate - params.bandwidth_hz / 2.0)) / 2.0
    h = scipy.signal.firwin(taps, edge / nyquist, window=("kaiser", 6.0))
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
    partial = x @ weights.astype(np.complex64)  # (receivers, blocks, taps per phase)
    out = partial[:, lags - 1 :, 0].copy()
    for lag in range(1, lags):
        out += partial[:, lags - 1 - lag : blocks - lag, lag]
    return out


def decimation_gain(
    sample_rate_hz: float, factor: int, params: FeatureParams, freqs: np.ndarray
) -> np.ndarray:
    """Power gain of the decimation filter at ``freqs`` (Hz offsets in the band), to undo."""
    weights = decimation_filter(sample_rate_hz, factor, params)
    h = weights[::-1, :].T.ravel()  # back to h[j]: weights[r, l] holds h[l f + f - 1 - r]
    _, response = scipy.signal.freqz(h, worN=freqs, fs=sample_rate_hz)
    return np.abs(response) ** 2


def fft_length(sample_rate_hz: float, frame_samples: int, params: FeatureParams) -> int:
    """FFT size: a power of two, at least the frame length, fine enough for the narrowest filter."""
    needed = max(frame_samples, math.ceil(sample_rate_hz / params.max_bin_hz))
    return 1 << (needed - 1).bit_length()


@lru_cache(maxsize=32)
def mel_filterbank(
    sample_rate_hz: float,
    nfft: int,
    params: FeatureParams,
    full_rate_hz: float | None = None,
    factor: int = 1,
) -> tuple[slice, np.ndarray]:
    """Triangular two-sided mel filters over the centred FFT bins of the analysis band.

    After a decimation by ``factor`` from ``full_rate_hz`` the weights also undo the
    decimation filter's gain at each bin, so the mel PSD is the full-rate capture's.

    Returns:
        The slice of centred (fftshift-ed) bins inside the band, and the weights
        ``(bins, n_mels)``, each column summing to 1 so a filter yields a mean PSD.
    """
    half_band = params.bandwidth_hz / 2.0
    freqs = (np.arange(nfft) - nfft // 2) * (sample_rate_hz / nfft)
    first = int(np.searchsorted(freqs, -half_band, side="left"))
    last = int(np.searchsorted(freqs, half_band, side="right"))
    band = slice(first, last)
    f = freqs[band]

    points = mel_points_hz(params)
    lower, centre, upper = points[:-2, None], points[1:-1, None], points[2:, None]
    rising = (f[None, :] - lower) / (centre - lower)
    falling = (upper - f[None, :]) / (upper - centre)
    weights = np.clip(np.minimum(rising, falling), 0.0, None)  # (n_mels, bins)
    sums = weights.sum(axis=1, keepdims=True)
    if np.any(sums == 0):
        raise ValueError("FFT too coarse for the mel filters; lower max_bin_hz")
    weights = weights / sums
    if factor > 1 and full_rate_hz is not None:
        weights = weights / decimation_gain(full_rate_hz, factor, params, f)[None, :]
    return band, np.ascontiguousarray(weights.T)


def log_mel_spectrogram(
    iq: np.ndarray, sample_rate_hz: float, params: FeatureParams | None = None
) -> np.ndarray:
    """Features of one capture.

    Args:
        iq: complex array ``(receivers, n_samples)``, one row per receiver in the model's order.
        sample_rate_hz: sample rate of every row.
        params: feature parameters of the model (defaults to the reference parameters).

    Returns:
        float32 ``(receivers, n_mels, n_frames)``, normalized with the model's fixed statistics.

    Raises:
        ValueError: the capture is too short or its sample rate narrower than the analysis band.
    """
    params = params or FeatureParams()
    if iq.ndim != 2 or not np.iscomplexobj(iq):
        raise ValueError("IQ must be a complex array of shape (receivers, samples)")
    if sample_rate_hz < params.bandwidth_hz:
        raise ValueError(
            f"sample rate {sample_rate_hz:g} Hz is below the model's analysis bandwidth "
            f"{params.bandwidth_hz:g} Hz"
        )
    factor = decimation_factor(sample_rate_hz, params)
    full_rate = sample_rate_hz
    if factor > 1:
        iq = decimate(iq, factor, decimation_filter(float(sample_rate_hz), factor, params))
        sample_rate_hz = sample_rate_hz / factor
    n_rx, n = iq.shape
    frame = n // params.n_frames
    if frame < params.min_frame_samples:
        raise ValueError(
            f"capture of {n} samples is too short: at least {params.min_samples} samples "
            "per receiver are needed"
        )
    frames = iq[:, : frame * params.n_frames].reshape(n_rx, params.n_frames, frame)
    window = scipy.signal.get_window("hann", frame).astype(np.float32)
    nfft = fft_length(sample_rate_hz, frame, params)
    spectrum = scipy.fft.fft(frames.astype(np.complex64) * window, n=nfft, axis=-1)
    spectrum = scipy.fft.fftshift(spectrum, axes=-1)
    band, weights = mel_filterbank(float(sample_rate_hz), nfft, params, full_rate, factor)
    in_band = spectrum[..., band]
    # Periodogram scaled to a power spectral density (power per Hz).
    psd = (in_band.real**2 + in_band.imag**2) / (sample_rate_hz * float(np.sum(window**2)))
    mel_psd = psd @ weights.astype(np.float32)  # (receivers, frames, n_mels)
    db = 10.0 * np.log10(np.maximum(mel_psd, 10.0 ** (params.floor_db / 10.0)))
    normalized = (db - params.mean_db) / params.std_db
    return np.ascontiguousarray(normalized.transpose(0, 2, 1), dtype=np.float32)
