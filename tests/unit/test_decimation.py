"""The decimation before a fast capture's spectrogram is the anti-alias FIR applied directly,
whichever way its matrix product is laid out (rows of several outputs for small factors, rows
of one for large ones), from the first output with a whole history to the last."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from inference_worker.core.capture import CaptureLimits
from inference_worker.core.decimation import (
    ALIAS_REJECTION_DB,
    decimate,
    decimation_factor,
    decimation_filter,
    decimator,
)
from inference_worker.core.features import FeatureParams, analyse


def filtered_directly(iq: np.ndarray, h: np.ndarray, factor: int) -> np.ndarray:
    """y[m] = sum_j h[j] x[m·factor + factor - 1 - j] for every m whose window lies in x."""
    full = np.stack([np.convolve(row.astype(np.complex128), h) for row in iq])
    first = h.size // factor - 1
    ends = np.arange(first, iq.shape[1] // factor) * factor + factor - 1
    return full[:, ends]


FOLLOWING = FeatureParams().reach_hz  # the band follows the carrier: ±13.5 kHz read
FIXED = FeatureParams().bandwidth_hz / 2.0  # a fixed band: ±6 kHz


@pytest.mark.parametrize(
    ("rate", "factor", "reach"),
    [
        (48_000.0, 2, FIXED),
        (96_000.0, 2, FOLLOWING),
        (72_000.0, 3, FIXED),
        (192_000.0, 5, FOLLOWING),
        (192_000.0, 8, FIXED),
        (384_000.0, 16, FIXED),
        (2_400_000.0, 72, FOLLOWING),
    ],
)
@pytest.mark.parametrize("extra", [0, 1, 37, 1_001])
def test_a_decimation_is_its_filter_applied_directly(rate, factor, reach, extra):
    h = decimation_filter(rate, factor, reach)
    plan = decimator(rate, factor, reach)
    n = h.size + 40 * factor + extra  # ragged lengths: rows padded at both ends
    rng = np.random.default_rng(factor * 1_000 + extra)
    iq = (rng.standard_normal((3, n)) + 1j * rng.standard_normal((3, n))).astype(np.complex64)
    expected = filtered_directly(iq, h, factor)
    got = decimate(iq, plan)
    assert got.dtype == np.complex64
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=2e-6 * np.abs(expected).max())


def test_small_factors_take_rows_of_several_outputs_and_large_ones_rows_of_one():
    assert decimator(96_000.0, 2, FOLLOWING).outputs_per_row > 1
    assert decimator(192_000.0, 5, FOLLOWING).outputs_per_row > 1
    assert decimator(2_400_000.0, 72, FOLLOWING).outputs_per_row == 1


@pytest.mark.parametrize("reach", [FOLLOWING, FIXED])
@pytest.mark.parametrize(
    "rate", [96_000.0, 128_000.0, 192_000.0, 256_000.0, 1_024_000.0, 2_400_000.0, 1e7]
)
def test_every_alias_band_stays_below_the_rejection_at_every_rate(rate, reach):
    """Everything the decimation folds onto ``±reach`` — every alias band, not only the first
    the filter's length is chosen by — is at least ``ALIAS_REJECTION_DB`` down."""
    transition = 2.0 * FIXED if reach == FIXED else FIXED
    factor = decimation_factor(rate, reach, transition)
    h = decimation_filter(rate, factor, reach)
    points = 1 << int(np.ceil(np.log2(512.0 * rate / reach)))
    gain_db = 20.0 * np.log10(np.abs(np.fft.fft(h, points)) + 1e-300)
    freqs = np.fft.fftfreq(points, 1.0 / rate)
    out_rate = rate / factor
    folded = (freqs + out_rate / 2.0) % out_rate - out_rate / 2.0  # where each lands after
    aliased = (np.abs(folded) <= reach) & (np.abs(freqs) >= out_rate - reach)
    assert gain_db[aliased].max() <= -ALIAS_REJECTION_DB
    passband = np.abs(freqs) <= reach
    assert gain_db[passband].min() > -3.0  # what is read is kept (its gain is undone after)


@pytest.mark.parametrize("follow_carrier_hz", [7_500.0, 0.0])
def test_no_accepted_capture_makes_its_features_allocate_more_than_100_mb(follow_carrier_hz):
    """The longest accepted capture at any accepted rate: one decimation factor's product once
    allocated 190 MB for its partial sums (66-99 kHz, band following)."""
    limits = CaptureLimits()
    params = FeatureParams(follow_carrier_hz=follow_carrier_hz)
    rng = np.random.default_rng(5)
    n = limits.max_samples
    iq = (rng.standard_normal((3, n)) + 1j * rng.standard_normal((3, n))).astype(np.complex64)
    peaks = {}
    for rate in (12e3, 24e3, 48e3, 66e3, 96e3, 132e3, 192e3, 384e3, 1e6, limits.max_sample_rate_hz):
        tracemalloc.start()
        try:
            analyse(iq, rate, params)
            peaks[rate] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert max(peaks.values()) <= 100e6, {
        rate: f"{peak / 1e6:.0f} MB" for rate, peak in peaks.items()
    }
