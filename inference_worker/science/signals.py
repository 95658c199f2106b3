"""What emitters send and what the channel does to it (pure numpy, seeded by the caller):
narrowband signals, Rician fading, interfering bursts. Used by the capture simulator."""

from __future__ import annotations

import math

import numpy as np


def add_interference(
    rng: np.random.Generator, iq: np.ndarray, rate: float, noise_var: float
) -> None:
    """One receiver hears a burst (another station keying up, a switching supply): a tone or
    band of noise 10-40 dB over the noise in a 1 kHz band, for 10-40 % of the capture."""
    n = iq.shape[1]
    row = int(rng.integers(iq.shape[0]))
    length = max(1, int(n * rng.uniform(0.1, 0.4)))
    start = int(rng.integers(0, n - length + 1))
    t = np.arange(length) / rate
    power = noise_var / rate * 1_000.0 * 10.0 ** (rng.uniform(10.0, 40.0) / 10.0)
    offset = rng.uniform(-0.45, 0.45) * min(rate, 12_000.0)
    burst = np.exp(2j * math.pi * offset * t)
    if rng.random() < 0.5:  # noise-like: a random walk of the phase spreads it over ~kHz
        burst = np.exp(1j * np.cumsum(rng.normal(0.0, 0.3, length))) * burst
    iq[row, start : start + length] += math.sqrt(power) * burst


def narrowband_signal(
    rng: np.random.Generator, t: np.ndarray, fm_fraction: float, fm_deviation_hz: float
) -> np.ndarray:
    """Unit-power narrowband signal: an FM tone or on/off-keyed CW."""
    if rng.random() < fm_fraction:
        tone_hz = rng.uniform(400.0, 1_500.0)
        beta = fm_deviation_hz / tone_hz
        phase = beta * np.sin(2.0 * math.pi * tone_hz * t + rng.uniform(0, 2 * math.pi))
        return np.exp(1j * phase)
    keying_hz = rng.uniform(3.0, 10.0)
    keyed = np.sin(2.0 * math.pi * keying_hz * t + rng.uniform(0, 2 * math.pi)) > -0.3
    return keyed.astype(np.float64) / math.sqrt(max(keyed.mean(), 1e-3)) + 0j


def rician_fading(
    rng: np.random.Generator, t: np.ndarray, doppler_hz: float, k_db: tuple[float, float]
) -> np.ndarray:
    """Unit-mean-power Rician fading: a line-of-sight term plus a sum-of-sinusoids scatter."""
    k = 10.0 ** (rng.uniform(*k_db) / 10.0)
    paths = 8
    doppler = doppler_hz * np.cos(rng.uniform(0, 2 * math.pi, paths))
    phases = rng.uniform(0, 2 * math.pi, paths)
    # Fading changes at most at ~10 Hz: evaluate it at 2 kHz and interpolate.
    coarse = np.arange(0.0, t[-1] + 1e-3, 5e-4) if t.size else t
    scatter = np.exp(1j * (2 * math.pi * np.outer(coarse, doppler) + phases)).sum(axis=1)
    scatter /= math.sqrt(paths)
    scatter = np.interp(t, coarse, scatter.real) + 1j * np.interp(t, coarse, scatter.imag)
    los = np.exp(1j * rng.uniform(0, 2 * math.pi))
    return math.sqrt(k / (k + 1.0)) * los + math.sqrt(1.0 / (k + 1.0)) * scatter
