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

from inference_worker.core.decimation import (
    decimate,
    decimation_factor,
    decimation_gain,
    decimator,
    taps_per_phase,
    transition_hz,
)
from inference_worker.core.mel import (
    band_bins,
    band_psd_rows,
    mel_filterbank,
    mel_pooling,
    pool_mel,
)

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
    edge_shoulders: bool = True
    """The outermost filters stay flat out to the band's edges, so every offset in the band is
    counted at its full power (without them the outermost ~230 Hz read 2-3.6 dB low)."""
    follow_carrier_hz: float = 7_500.0
    """How far the band may move to follow each receiver's carrier (oscillator errors of
    ±50 ppm at 145 MHz are ±7.3 kHz); 0 keeps the band on the tuned frequency."""
    max_bin_hz: float = 12.0
    """Coarsest FFT bin spacing allowed; frames are zero-padded to reach it."""
    min_frame_samples: int = 16
    floor_db: float = -250.0
    """Powers below this (e.g. an all-zero channel) are clipped to it before normalization."""
    mean_db: float = -140.0
    std_db: float = 20.0

    def __post_init__(self) -> None:
        """Refuse values no features are computed with: when a model loads, not in its jobs."""
        for name, value in asdict(self).items():
            if name == "edge_shoulders":
                fits = isinstance(value, bool)
            elif isinstance(value, bool) or not isinstance(value, int | float):
                fits = False
            elif name in ("n_mels", "n_frames", "min_frame_samples"):
                fits = isinstance(value, int) and value >= 1
            elif name in ("floor_db", "mean_db"):  # levels: any finite number of dB
                fits = math.isfinite(value)
            else:  # widths and scales: positive; the carrier's reach may be 0 (a fixed band)
                above = value >= 0 if name == "follow_carrier_hz" else value > 0
                fits = math.isfinite(value) and above
            if not fits:
                raise ValueError(f"feature parameter {name} cannot be {value!r}")

    @property
    def reach_hz(self) -> float:
        """The farthest offset from the tuned frequency the features may read."""
        return self.bandwidth_hz / 2.0 + self.follow_carrier_hz

    @property
    def min_samples(self) -> int:
        """Shortest capture, in samples per receiver, that yields the fixed number of frames."""
        return self.n_frames * self.min_frame_samples

    @classmethod
    def from_metadata(cls, data: dict[str, Any]) -> FeatureParams:
        if not isinstance(data, dict):
            raise ValueError(f"feature parameters must be an object, not {type(data).__name__}")
        kind = data.get("kind", FEATURE_KIND)
        if kind != FEATURE_KIND:
            raise ValueError(
                f"unsupported feature kind {kind!r}; this worker computes {FEATURE_KIND!r}"
            )
        known = {f for f in cls.__dataclass_fields__}
        # models trained before these parameters existed computed features without them
        values = {**LEGACY_VALUES, **{k: v for k, v in data.items() if k in known}}
        return cls(**values)

    def to_metadata(self) -> dict[str, Any]:
        return {"kind": FEATURE_KIND, **asdict(self)}


LEGACY_VALUES = {"edge_shoulders": False, "follow_carrier_hz": 0.0}
"""What a model's metadata that does not name these parameters was trained with."""


def load_signal_maths() -> None:
    """Load scipy.signal now (~0.5 s, scipy.stats behind it), which the windows and the
    decimation filters here import when first built.

    Importing this module does not load it: the producer and the command line, which import it
    for its limits, need not pay. A process that serves calls this before serving (the worker
    before its pool forks, the shim before gunicorn forks, each shim process as it is built), so
    that no first job or first fast submission (whose checks design the decimation filter)
    waits for it.
    """
    import scipy.signal  # noqa: F401


@lru_cache(maxsize=32)
def frame_window(frame: int) -> tuple[np.ndarray, float]:
    """The Hann window of a frame (float32, read-only) and the sum of its squares (cached:
    scipy builds a window in tens of microseconds, a sizeable share of a 12 kHz capture's
    features). scipy.signal is loaded here, when first needed (see :func:`load_signal_maths`)."""
    import scipy.signal

    window = scipy.signal.get_window("hann", frame).astype(np.float32)
    window.flags.writeable = False
    return window, float(np.sum(window**2))


def min_samples_at(
    sample_rate_hz: float, min_samples: int, bandwidth_hz: float, follow_carrier_hz: float = 0.0
) -> int:
    """Shortest capture, in samples per receiver at ``sample_rate_hz``, that yields the fixed
    number of frames (``min_samples`` at the analysis rate) once decimated: the decimation
    filter's first outputs are dropped."""
    reach = bandwidth_hz / 2.0 + follow_carrier_hz
    factor = decimation_factor(
        sample_rate_hz, reach, transition_hz(bandwidth_hz, follow_carrier_hz > 0)
    )
    if factor == 1:
        return min_samples
    return (min_samples + taps_per_phase(float(sample_rate_hz), factor, reach) - 1) * factor


def fft_length(sample_rate_hz: float, frame_samples: int, params: FeatureParams) -> int:
    """FFT size: a power of two, at least the frame length, fine enough for the narrowest filter."""
    needed = max(frame_samples, math.ceil(sample_rate_hz / params.max_bin_hz))
    return 1 << (needed - 1).bit_length()


@lru_cache(maxsize=32)
def inverse_decimation_gain(
    full_rate_hz: float, factor: int, reach_hz: float, sample_rate_hz: float, nfft: int
) -> np.ndarray:
    """Per centred FFT bin of the decimated capture: what undoes the decimation filter's gain."""
    freqs = (np.arange(nfft) - nfft // 2) * (sample_rate_hz / nfft)
    gain = decimation_gain(full_rate_hz, factor, reach_hz, freqs)
    return (1.0 / np.maximum(gain, 1e-6)).astype(np.float32)


def windowed_spectrum(frames: np.ndarray, window: np.ndarray, nfft: int) -> np.ndarray:
    """The FFT (complex64, bins in the FFT's order) of each windowed frame ``(..., frame)``
    zero-padded to ``nfft``: the frames are windowed straight into the padded buffer, which the
    FFT then overwrites (no other copy of the capture)."""
    if frames.dtype != np.complex64:
        frames = frames.astype(np.complex64)
    padded = np.zeros((*frames.shape[:-1], nfft), np.complex64)
    np.multiply(frames, window, out=padded[..., : frames.shape[-1]])
    return scipy.fft.fft(padded, axis=-1, overwrite_x=True)


def bin_power(spectrum: np.ndarray) -> np.ndarray:
    """``|X|²`` of a complex64 spectrum as float32, squaring the spectrum in place (it is not
    read afterwards)."""
    parts = spectrum.view(np.float32)
    np.square(parts, out=parts)
    return np.add(parts[..., 0::2], parts[..., 1::2])


def take_centred(
    power: np.ndarray, start: int, nfft: int, scale: np.float32, out: np.ndarray
) -> None:
    """``out = scale × power`` over the centred (fftshift-ed) bins ``start … start + width - 1``
    of ``power`` ``(..., nfft)`` kept in the FFT's order: one run of bins, or two where it
    wraps past the last bin, without shifting the whole spectrum."""
    width = out.shape[-1]
    first = (start + nfft // 2) % nfft  # nfft is even: centred bin c is FFT bin c + nfft/2
    head = min(width, nfft - first)
    np.multiply(power[..., first : first + head], scale, out=out[..., :head])
    if head < width:
        np.multiply(power[..., : width - head], scale, out=out[..., head:])


@dataclass(frozen=True)
class BandReport:
    """What the spectrum says about each receiver's signal, beside the features."""

    carrier_offset_hz: np.ndarray
    """Where the band was centred: the signal's power centroid, within the reach allowed."""
    signal_offset_hz: np.ndarray
    """The signal's power centroid, wherever it lies in the searched span (0: none detected)."""
    off_band_share: np.ndarray
    """Share of the signal's excess power over the noise that lies outside the band read."""
    reach_hz: float
    """How far the band could move at this sample rate."""


def follow_reach_hz(sample_rate_hz: float, params: FeatureParams) -> float:
    """How far the band can follow a carrier at this (analysis) rate: the band must stay clear
    of the capture's own edges (the receiver's anti-alias filter rolls off there)."""
    room = 0.45 * sample_rate_hz - params.bandwidth_hz / 2.0
    return float(min(params.follow_carrier_hz, max(room, 0.0)))


def row_medians(values: np.ndarray) -> np.ndarray:
    """``np.median(values, axis=1, keepdims=True)`` for a 2-D float array, from one partition
    of each row (np.median costs twice as much on the rows a spectrum gives)."""
    n = values.shape[1]
    middle = n // 2
    if n % 2:
        return np.partition(values, middle, axis=1)[:, middle : middle + 1]
    part = np.partition(values, (middle - 1, middle), axis=1)
    return (part[:, middle - 1 : middle] + part[:, middle : middle + 1]) / values.dtype.type(2)


def find_carriers(
    power: np.ndarray, sample_rate_hz: float, nfft: int, params: FeatureParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Each receiver's signal centroid from its mean power spectrum ``(receivers, nfft)``
    (centred bins): the band is moved onto it, in whole bins, within the reach allowed."""
    reach = follow_reach_hz(sample_rate_hz, params)
    half_band = params.bandwidth_hz / 2.0
    span = band_bins(sample_rate_hz, nfft, max(half_band, min(params.reach_hz, sample_rate_hz / 2)))
    bin_hz = sample_rate_hz / nfft
    f = (np.arange(span.start, span.stop) - nfft // 2) * bin_hz
    searched = power[:, span]
    noise = row_medians(searched)
    excess = np.clip(searched - 2.0 * noise, 0.0, None)
    total = excess.sum(axis=1)
    found = total > 0
    centroid = np.where(found, excess @ f / np.where(found, total, 1.0), 0.0)
    shift_bins = np.rint(np.clip(centroid, -reach, reach) / bin_hz).astype(np.int64)
    carrier = shift_bins * bin_hz
    inside = np.abs(f[None, :] - carrier[:, None]) <= params.bandwidth_hz / 2.0
    off_band = np.where(found, (excess * ~inside).sum(axis=1) / np.where(found, total, 1.0), 0.0)
    return shift_bins, centroid, off_band, reach


def log_mel_spectrogram(
    iq: np.ndarray, sample_rate_hz: float, params: FeatureParams | None = None
) -> np.ndarray:
    """Features of one capture (see :func:`analyse`)."""
    return analyse(iq, sample_rate_hz, params)[0]


def analyse(
    iq: np.ndarray, sample_rate_hz: float, params: FeatureParams | None = None
) -> tuple[np.ndarray, BandReport]:
    """Features of one capture, and where each receiver's signal was found.

    Args:
        iq: complex array ``(receivers, n_samples)``, one row per receiver in the model's order.
        sample_rate_hz: sample rate of every row.
        params: feature parameters of the model (defaults to the reference parameters).

    Returns:
        float32 ``(receivers, n_mels, n_frames)``, normalized with the model's fixed statistics,
        and the band report.

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
    following = params.follow_carrier_hz > 0
    factor = decimation_factor(
        sample_rate_hz, params.reach_hz, transition_hz(params.bandwidth_hz, following)
    )
    full_rate, samples = float(sample_rate_hz), iq.shape[1]
    short = samples // factor < params.min_samples  # known before a filter (minutes at 1 THz)
    if factor > 1 and not short:
        iq = decimate(iq, decimator(full_rate, factor, params.reach_hz))
        sample_rate_hz = sample_rate_hz / factor
    n_rx, n = iq.shape
    frame = n // params.n_frames
    if short or frame < params.min_frame_samples:
        needed = params.min_samples * factor
        if not short:  # the filter is designed: the exact figure
            needed = min_samples_at(
                full_rate, params.min_samples, params.bandwidth_hz, params.follow_carrier_hz
            )
        at = f" at {full_rate:g} Hz" if factor > 1 else ""
        least = f"{needed}" if needed < 10**12 else f"{float(needed):.3g}"
        raise ValueError(
            f"capture of {samples} samples{at} is too short: at least {least} samples per "
            "receiver are needed"
        )
    frames = iq[:, : frame * params.n_frames].reshape(n_rx, params.n_frames, frame)
    window, window_power = frame_window(frame)
    nfft = fft_length(sample_rate_hz, frame, params)
    power = bin_power(windowed_spectrum(frames, window, nfft))  # in the FFT's order
    # Periodogram scaled to a power spectral density (power per Hz).
    scale = np.float32(1.0 / (sample_rate_hz * window_power))
    band = mel_filterbank(float(sample_rate_hz), nfft, params)[0]
    width = band.stop - band.start
    if following:
        mean_power = scipy.fft.fftshift(power.mean(axis=1), axes=-1)
        shift, centroid, off_band, reach = find_carriers(mean_power, sample_rate_hz, nfft, params)
    else:
        shift = np.zeros(n_rx, np.int64)
        centroid = off_band = np.zeros(n_rx)
        reach = 0.0
    starts = band.start + shift
    psd = band_psd_rows(n_rx, params.n_frames, width)
    for r, s in enumerate(starts):  # each receiver's band is a contiguous run of centred bins
        take_centred(power[r], int(s), nfft, scale, psd[r])
    if factor > 1:
        undo = inverse_decimation_gain(
            full_rate, factor, params.reach_hz, float(sample_rate_hz), nfft
        )
        bins = starts[:, None] + np.arange(width)[None, :]
        psd *= undo[bins][:, None, :]
    mel_psd = pool_mel(psd, mel_pooling(float(sample_rate_hz), nfft, params))
    db = 10.0 * np.log10(np.maximum(mel_psd, 10.0 ** (params.floor_db / 10.0)))
    normalized = (db - params.mean_db) / params.std_db
    features = np.ascontiguousarray(normalized, dtype=np.float32)
    report = BandReport(
        carrier_offset_hz=shift * (sample_rate_hz / nfft),
        signal_offset_hz=np.asarray(centroid, dtype=float),
        off_band_share=np.asarray(off_band, dtype=float),
        reach_hz=reach,
    )
    return features, report
