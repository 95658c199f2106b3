"""Features: a fixed shape for any rate and length, dB/Hz, receiver differences kept."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest
import scipy.fft

from inference_worker.core.decimation import decimation_factor, transition_hz
from inference_worker.core.features import (
    FeatureParams,
    analyse,
    bin_power,
    log_mel_spectrogram,
    row_medians,
    take_centred,
    windowed_spectrum,
)
from inference_worker.core.mel import (
    band_psd_rows,
    mel_band_widths_hz,
    mel_filterbank,
    mel_pooling,
    pool_mel,
)

PARAMS = FeatureParams()
FIXED_BAND = replace(PARAMS, follow_carrier_hz=0.0)


def tone(rate: float, duration: float, offset_hz: float, power: float, noise: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    n = int(rate * duration)
    t = np.arange(n) / rate
    signal = np.sqrt(power) * np.exp(2j * np.pi * offset_hz * t)
    noise_part = np.sqrt(noise * rate / 2) * (rng.normal(size=n) + 1j * rng.normal(size=n))
    return (signal + noise_part).astype(np.complex64)


@pytest.mark.parametrize("rate", [12_000.0, 24_000.0, 48_000.0, 192_000.0])
@pytest.mark.parametrize("duration", [0.1, 0.25, 1.0])
def test_any_rate_and_length_maps_to_the_fixed_shape(rate, duration):
    iq = np.stack([tone(rate, duration, 1_000.0, 1e-6, 1e-14, s) for s in range(3)])
    features = log_mel_spectrogram(iq, rate, PARAMS)
    assert features.shape == (3, 128, 32)
    assert features.dtype == np.float32
    assert np.isfinite(features).all()


def test_noise_floor_in_db_per_hz_does_not_depend_on_the_sample_rate():
    """White noise of a given density reads the same at 12 kHz and 192 kHz."""
    density = 1e-14
    levels = []
    for rate in (12_000.0, 192_000.0):
        iq = np.stack([tone(rate, 0.5, 0.0, 0.0, density, s) for s in range(3)])
        db = log_mel_spectrogram(iq, rate, PARAMS) * PARAMS.std_db + PARAMS.mean_db
        levels.append(10 * np.log10(np.mean(10 ** (db / 10))))  # mean power, not mean of dB
    assert levels[0] == pytest.approx(10 * np.log10(density), abs=0.5)
    assert levels[1] == pytest.approx(levels[0], abs=0.5)


def test_power_difference_between_receivers_survives_normalization():
    """A receiver 20 dB weaker reads 20 dB lower: no per-channel z-score erases it."""
    rate = 12_000.0
    strong = tone(rate, 0.5, 500.0, 1e-6, 1e-16, 1)
    iq = np.stack([strong, strong * 0.1, strong])
    features = log_mel_spectrogram(iq, rate, PARAMS)
    difference_db = (features[0] - features[1]).mean() * PARAMS.std_db
    assert difference_db == pytest.approx(20.0, abs=0.01)
    assert features[0].mean() == pytest.approx(features[2].mean())


def test_a_tone_lights_the_mel_band_of_its_frequency_offset():
    rate = 48_000.0
    iq = np.stack(
        [
            tone(rate, 0.5, offset, 1e-6, 1e-16, i)
            for i, offset in enumerate([-3_000.0, 0.0, 2_000.0])
        ]
    )
    peaks = log_mel_spectrogram(iq, rate, FIXED_BAND).mean(axis=2).argmax(axis=1)
    assert peaks[0] < peaks[1] < peaks[2]
    assert abs(peaks[1] - 63.5) < 2  # the carrier sits in the middle bands


def test_every_mel_filter_covers_at_least_one_fft_bin():
    for rate in (12_000.0, 192_000.0):
        _, weights = mel_filterbank(rate, 1024 if rate == 12_000.0 else 16_384, PARAMS)
        assert weights.sum(axis=0) == pytest.approx(1.0)


@pytest.mark.parametrize(("rate", "nfft"), [(12_000.0, 1024), (38_400.0, 4096), (24_000.0, 2048)])
def test_sparse_mel_pooling_equals_the_filterbank_product(rate, nfft):
    band, weights = mel_filterbank(rate, nfft, PARAMS)
    width = band.stop - band.start
    psd = band_psd_rows(3, PARAMS.n_frames, width)  # padded rows, as analyse fills them
    psd[...] = np.random.default_rng(0).random((3, PARAMS.n_frames, width), dtype=np.float32)
    pooled = pool_mel(psd, mel_pooling(rate, nfft, PARAMS))
    assert pooled.shape == (3, PARAMS.n_mels, PARAMS.n_frames)
    np.testing.assert_allclose(pooled, (psd @ weights).transpose(0, 2, 1), rtol=1e-5)


def test_capture_too_short_for_the_frames_is_refused():
    iq = np.ones((3, PARAMS.min_samples - 1), dtype=np.complex64)
    with pytest.raises(ValueError, match="too short"):
        log_mel_spectrogram(iq, 12_000.0, PARAMS)


def test_sample_rate_narrower_than_the_analysis_band_is_refused():
    iq = np.ones((3, 4_000), dtype=np.complex64)
    with pytest.raises(ValueError, match="analysis bandwidth"):
        log_mel_spectrogram(iq, 8_000.0, PARAMS)


def test_parameters_round_trip_through_model_metadata():
    assert FeatureParams.from_metadata(PARAMS.to_metadata()) == PARAMS
    legacy = {
        k: v
        for k, v in PARAMS.to_metadata().items()
        if k not in ("edge_shoulders", "follow_carrier_hz")
    }
    assert FeatureParams.from_metadata(legacy) == replace(
        PARAMS, edge_shoulders=False, follow_carrier_hz=0.0
    )
    with pytest.raises(ValueError, match="unsupported feature kind"):
        FeatureParams.from_metadata({"kind": "mfcc"})


@pytest.mark.parametrize("offset_hz", [0.0, 2_500.0, -5_000.0])
def test_a_fast_capture_is_decimated_without_changing_what_it_measures(offset_hz):
    """A tone and its noise read the same at 12 kHz and 192 kHz (decimated by 8 first)."""
    levels = []
    for rate in (12_000.0, 192_000.0):
        iq = np.stack([tone(rate, 1.0, offset_hz, 1e-9, 1e-15, s) for s in range(3)])
        db = log_mel_spectrogram(iq, rate, FIXED_BAND) * PARAMS.std_db + PARAMS.mean_db
        levels.append(db.mean(axis=(0, 2)))  # per mel band, over receivers and frames
    peak = int(np.argmax(levels[0]))
    assert int(np.argmax(levels[1])) == peak
    assert levels[1][peak] == pytest.approx(levels[0][peak], abs=0.5)
    assert np.median(np.abs(levels[1] - levels[0])) < 0.5  # the noise floor too


def test_what_lies_outside_the_band_does_not_fold_into_it():
    rate = 192_000.0
    quiet = np.stack([tone(rate, 0.5, 0.0, 0.0, 1e-15, s) for s in range(3)])
    # a strong station 30 kHz off: after decimation to 24 kHz it would alias to +6 kHz
    loud = quiet + np.stack([tone(rate, 0.5, 30_000.0, 1e-7, 0.0, s) for s in range(3)])
    difference = log_mel_spectrogram(loud, rate, PARAMS) - log_mel_spectrogram(quiet, rate, PARAMS)
    assert np.abs(difference).max() * PARAMS.std_db < 1.0  # dB, 50 dB above the noise floor


@pytest.mark.parametrize("follow_carrier_hz", [7_500.0, 0.0])
@pytest.mark.parametrize("rate", [96_000.0, 192_000.0, 384_000.0, 2_400_000.0])
def test_a_station_just_past_the_first_alias_edge_does_not_fold_in_at_any_rate(
    rate, follow_carrier_hz
):
    """The dearest place for a strong neighbour: where the decimation's first alias begins, so
    that it would fold onto the edge of the span the features read. At 384 kHz and above a
    filter of a fixed length left it 12-14 dB down, enough to pull the band off its carrier."""
    params = replace(PARAMS, follow_carrier_hz=follow_carrier_hz)
    following = follow_carrier_hz > 0
    factor = decimation_factor(rate, params.reach_hz, transition_hz(params.bandwidth_hz, following))
    offset = rate / factor - params.reach_hz + 500.0
    quiet = np.stack([tone(rate, 0.5, 0.0, 0.0, 1e-15, s) for s in range(3)])
    # ~47 dB above the noise's density in the spectrum's bins: below it once 58 dB down
    loud = quiet + np.stack([tone(rate, 0.5, offset, 1e-9, 0.0, s) for s in range(3)])
    difference = log_mel_spectrogram(loud, rate, params) - log_mel_spectrogram(quiet, rate, params)
    # each band's level over the capture (a frame's cell also moves with the noise's phase)
    assert np.abs(difference.mean(axis=2)).max() * params.std_db < 0.5  # dB


def test_a_short_fast_capture_needs_the_samples_its_decimation_drops():
    from inference_worker.core.features import min_samples_at

    shortest = (PARAMS.min_samples, PARAMS.bandwidth_hz, PARAMS.follow_carrier_hz)
    assert min_samples_at(12_000.0, *shortest) == PARAMS.min_samples
    needed = min_samples_at(192_000.0, *shortest)
    iq = np.stack([tone(192_000.0, needed / 192_000.0, 0.0, 1e-9, 1e-15, s) for s in range(3)])
    assert log_mel_spectrogram(iq, 192_000.0, PARAMS).shape == (3, 128, 32)
    with pytest.raises(ValueError, match=f"2612 samples at 192000 Hz .* at least {needed} "):
        log_mel_spectrogram(iq[:, : needed - 8], 192_000.0, PARAMS)
    for shorter_than_the_filter in (0, 3, 40):
        with pytest.raises(ValueError, match="too short"):
            log_mel_spectrogram(iq[:, :shorter_than_the_filter], 96_000.0, PARAMS)


@pytest.mark.parametrize("rate", [1e9, 1e12, 1e300])
def test_a_capture_too_short_for_its_rate_is_refused_before_a_filter_is_designed(rate, monkeypatch):
    """A task message of a rate no service accepts (the shim stops at 10 MHz) had its pool
    process design a decimation filter of millions of taps, for minutes, before the capture was
    found too short."""
    import inference_worker.core.features as features

    def no_design(*args):
        raise AssertionError("a decimation filter was designed")

    monkeypatch.setattr(features, "decimator", no_design)
    monkeypatch.setattr(features, "min_samples_at", no_design)
    iq = np.ones((3, 480_000), dtype=np.complex64)
    with pytest.raises(ValueError, match=re.escape(f"480000 samples at {rate:g} Hz is too short")):
        log_mel_spectrogram(iq, rate, PARAMS)


def band_power(features: np.ndarray, params: FeatureParams) -> np.ndarray:
    """In-band power per receiver read back from the features (as the model's power branch does)."""
    db = features.astype(np.float64) * params.std_db + params.mean_db
    return (
        (10.0 ** (db / 10.0) * mel_band_widths_hz(params)[None, :, None]).sum(axis=1).mean(axis=1)
    )


@pytest.mark.parametrize("error_hz", [7_000.0, -7_000.0])
def test_the_band_follows_a_receivers_carrier(error_hz):
    """A tone 5 kHz off the tuned frequency, heard through a 7 kHz oscillator error (12 kHz or
    2 kHz off in all), is still measured at its true power; a fixed band loses it."""
    rate, power = 48_000.0, 1e-6
    iq = np.stack([tone(rate, 0.5, 5_000.0 + error_hz, power, 1e-16, s) for s in range(3)])
    features, report = analyse(iq, rate, PARAMS)
    assert 10 * np.log10(band_power(features, PARAMS) / power) == pytest.approx(0.0, abs=0.3)
    # the band moves as far as it may (7.5 kHz), which keeps a tone 12 kHz off inside it
    assert np.all(np.abs(report.carrier_offset_hz - (5_000.0 + error_hz)) < 6_000.0 - 150.0)
    assert report.signal_offset_hz == pytest.approx(5_000.0 + error_hz, abs=10.0)
    assert report.off_band_share == pytest.approx(0.0, abs=0.01)
    if abs(5_000.0 + error_hz) > 6_000.0:
        fixed = band_power(log_mel_spectrogram(iq, rate, FIXED_BAND), FIXED_BAND)
        assert np.all(10 * np.log10(fixed / power) < -20.0)


def test_a_signal_beyond_the_reach_is_reported_off_band():
    rate = 12_000.0  # no room to follow: the band is the whole capture
    iq = np.stack([tone(rate, 0.5, 5_000.0, 1e-6, 1e-16, s) for s in range(3)])
    _, report = analyse(iq, rate, PARAMS)
    assert report.reach_hz == 0.0
    assert report.signal_offset_hz == pytest.approx(5_000.0, abs=50.0)


@pytest.mark.parametrize("offset_hz", [-5_950.0, -5_900.0, 5_850.0])
def test_offsets_at_the_band_edge_are_counted_at_full_power(offset_hz):
    """The outermost filters are flat out to the edge: a tone in the outer 230 Hz reads its
    power (it read 2-3.6 dB low when the last triangle was never completed)."""
    rate, power = 48_000.0, 1e-6  # 1 s: frames long enough that the tone's own width is ~100 Hz
    iq = np.stack([tone(rate, 1.0, offset_hz, power, 1e-16, s) for s in range(3)])
    measured = band_power(log_mel_spectrogram(iq, rate, FIXED_BAND), FIXED_BAND)
    assert 10 * np.log10(measured / power) == pytest.approx(0.0, abs=0.3)
    legacy = replace(FIXED_BAND, edge_shoulders=False)
    old = band_power(log_mel_spectrogram(iq, rate, legacy), legacy)
    assert np.all(10 * np.log10(old / power) < -1.0)


@pytest.mark.parametrize("start", [0, 5, 400, 1000, 1024 - 300, 1024 - 1])
def test_a_run_of_centred_bins_is_read_from_the_unshifted_spectrum(start):
    """The band is copied from the spectrum in the FFT's order, wrapping where the run of
    centred bins crosses the unshifted array's end, exactly as from the shifted spectrum."""
    nfft, width = 1024, 300
    power = np.random.default_rng(1).random((2, nfft)).astype(np.float32)
    scale = np.float32(0.37)
    out = np.empty((2, min(width, nfft - start)), np.float32)
    take_centred(power, start, nfft, scale, out)
    expected = np.fft.fftshift(power, axes=-1)[:, start : start + out.shape[-1]] * scale
    assert np.array_equal(out, expected)


def test_the_spectrum_and_its_power_match_the_textbook_forms():
    rng = np.random.default_rng(2)
    frames = (rng.standard_normal((3, 4, 100)) + 1j * rng.standard_normal((3, 4, 100))).astype(
        np.complex64
    )
    window = rng.random(100).astype(np.float32)
    spectrum = windowed_spectrum(frames, window, 256)
    expected = scipy.fft.fft(frames * window, n=256, axis=-1)
    assert np.array_equal(spectrum, expected)
    assert np.array_equal(bin_power(spectrum.copy()), expected.real**2 + expected.imag**2)


@pytest.mark.parametrize("n", [1, 2, 7, 10, 2900, 2901])
def test_row_medians_equal_numpys(n):
    values = np.random.default_rng(n).random((3, n)).astype(np.float32)
    medians = row_medians(values)
    assert medians.dtype == np.float32
    assert np.array_equal(medians, np.median(values, axis=1, keepdims=True))
