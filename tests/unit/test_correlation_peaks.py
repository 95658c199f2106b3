"""One window's delays: windows are cut at whole samples, and what each starts off GPS time is
taken out of its pairs' delays, so every window's delay is the true one wherever its start falls
between two samples (a sample at 12 kHz is 83 µs)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from inference_worker.core.correlation_peaks import peak_delays, stretches_at
from inference_worker.core.geodesy import SPEED_OF_LIGHT_M_S, geodesic_m
from inference_worker.core.recording_sets import overlap

from .test_tdoa import EMITTER, STATIONS, recordings

MARGIN = 40
LENGTH = 3_000


def window_errors_us(with_fractions: bool) -> tuple[np.ndarray, np.ndarray]:
    """Each window's pairs' delay less the true one (µs), and where each window starts past a
    whole sample in each recording."""
    recs, bases = recordings()
    arrival = [geodesic_m(s.lat, s.lon, *EMITTER) / SPEED_OF_LIGHT_M_S for s in STATIONS]
    pairs = list(itertools.combinations(range(len(STATIONS)), 2))
    start, _ = overlap(bases)
    errors, starts = [], []
    for k in range(12):
        stretches, fractions = stretches_at(recs, bases, start + 1 + 0.25 * k, LENGTH + 2 * MARGIN)
        delays, _ = peak_delays(
            stretches,
            pairs,
            MARGIN,
            np.full(len(pairs), 12_001.0),
            np.full(len(pairs), 3e-3),
            fractions if with_fractions else None,
        )
        errors.append([delays[r] - (arrival[a] - arrival[b]) for r, (a, b) in enumerate(pairs)])
        starts.append(fractions)
    return np.array(errors) * 1e6, np.array(starts)


def test_every_windows_delay_is_true_wherever_its_start_falls_between_samples():
    errors, starts = window_errors_us(with_fractions=True)
    assert np.ptp(starts) > 0.5  # the windows start all over the space between samples
    assert np.abs(errors).max() < 4.0  # 20 dB SNR, 2.5 kHz wide: about 1 µs a window


def test_without_the_fractions_the_delays_are_off_by_them():
    errors, starts = window_errors_us(with_fractions=False)
    expected = np.stack([starts[:, a] - starts[:, b] for a, b in ((0, 1), (0, 2), (1, 2))], 1)
    assert errors == pytest.approx(expected / 12_001.0 * 1e6, abs=4.0)
    assert np.abs(errors).max() > 20.0
