"""The decimation before a fast capture's spectrogram is the anti-alias FIR applied directly,
whichever way its matrix product is laid out (rows of several outputs for small factors, rows
of one for large ones), from the first output with a whole history to the last."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from inference_worker.core.capture import CaptureLimits
from inference_worker.core.decimation import decimate, decimation_filter, decimator
from inference_worker.core.features import FeatureParams, analyse


def filtered_directly(iq: np.ndarray, h: np.ndarray, factor: int) -> np.ndarray:
    """y[m] = sum_j h[j] x[m·factor + factor - 1 - j] for every m whose window lies in x."""
    full = np.stack([np.convolve(row.astype(np.complex128), h) for row in iq])
    first = h.size // factor - 1
    ends = np.arange(first, iq.shape[1] // factor) * factor + factor - 1
    return full[:, ends]


@pytest.mark.parametrize(
    ("rate", "factor", "following"),
    [
        (48_000.0, 2, False),
        (96_000.0, 2, True),
        (72_000.0, 3, False),
        (192_000.0, 5, True),
        (192_000.0, 8, False),
        (384_000.0, 16, False),
        (2_400_000.0, 72, True),
    ],
)
@pytest.mark.parametrize("extra", [0, 1, 37, 1_001])
def test_a_decimation_is_its_filter_applied_directly(rate, factor, following, extra):
    h = decimation_filter(rate, factor, following)
    plan = decimator(rate, factor, following)
    n = h.size + 40 * factor + extra  # ragged lengths: rows padded at both ends
    rng = np.random.default_rng(factor * 1_000 + extra)
    iq = (rng.standard_normal((3, n)) + 1j * rng.standard_normal((3, n))).astype(np.complex64)
    expected = filtered_directly(iq, h, factor)
    got = decimate(iq, plan)
    assert got.dtype == np.complex64
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=2e-6 * np.abs(expected).max())


def test_small_factors_take_rows_of_several_outputs_and_large_ones_rows_of_one():
    assert decimator(96_000.0, 2, True).outputs_per_row > 1
    assert decimator(192_000.0, 5, True).outputs_per_row > 1
    assert decimator(2_400_000.0, 72, True).outputs_per_row == 1


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
