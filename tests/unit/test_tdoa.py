"""Time differences of arrival on synthetic GPS-stamped recordings: the delays come out at the
true propagation differences, and the position search finds the emitter with an honest ellipse."""

from __future__ import annotations

import numpy as np
import pytest

from inference_worker.core import correlation_peaks, recording_sets, window_correlations
from inference_worker.core.contract import Receiver
from inference_worker.core.ellipse import contains, distance_m
from inference_worker.core.geodesy import SPEED_OF_LIGHT_M_S, geodesic_m
from inference_worker.core.kiwi_wav import BLOCK_SAMPLES, read_kiwi_wav, timebase, write_kiwi_wav
from inference_worker.core.likelihood_map import contour_features, render_png
from inference_worker.core.tdoa import solve
from inference_worker.core.tdoa_locate import locate
from inference_worker.core.tdoa_results import describe_solution
from inference_worker.core.time_differences import (
    FEWEST_WINDOWS,
    PairDelay,
    TdoaError,
    pair_delays,
)
from inference_worker.science.kiwi_quirks import QUIRKS
from inference_worker.science.kiwi_sets import rewritten, synthetic_set

STATIONS = (
    Receiver("north", 47.4, 8.5),  # about 300-700 km apart
    Receiver("west", 45.2, 5.7),
    Receiver("east", 45.4, 11.0),
)
EMITTER = (46.1, 8.2)


def exact_delays(stations, emitter, sigma_s: float) -> list[PairDelay]:
    """Every pair's true delay from ``emitter``, claimed to within ``sigma_s``."""
    arrival = [geodesic_m(s.lat, s.lon, *emitter) / SPEED_OF_LIGHT_M_S for s in stations]
    return [
        PairDelay(a, b, arrival[a] - arrival[b], sigma_s, 10, 10)
        for a in range(len(stations))
        for b in range(a + 1, len(stations))
    ]


def record(station: Receiver, seed: int, *, start_s: float, rate_hz: float, seconds: float):
    """What a receiver clocked at ``rate_hz`` records from GPS time ``start_s``: a noise-like
    signal 2.5 kHz wide arriving after the great-circle delay, plus receiver noise, with 1 µs
    jitter on its block stamps."""
    rng = np.random.default_rng(seed)
    tones = np.random.default_rng(99)  # the transmitted signal: the same at every receiver
    frequencies = tones.uniform(-1_250.0, 1_250.0, 150)
    phases = tones.uniform(0, 2 * np.pi, 150)
    n = int(seconds * rate_hz) // BLOCK_SAMPLES * BLOCK_SAMPLES
    delay = geodesic_m(station.lat, station.lon, *EMITTER) / SPEED_OF_LIGHT_M_S
    t = start_s + np.arange(n) / rate_hz - delay
    signal = np.zeros(n, complex)
    for f, p in zip(frequencies, phases, strict=True):
        signal += np.exp(1j * (2 * np.pi * f * t + p))
    signal *= 0.2 / np.sqrt(len(frequencies))
    noise = 0.02 * (rng.normal(size=n) + 1j * rng.normal(size=n))  # about 20 dB SNR
    stamps = start_s + np.arange(n // BLOCK_SAMPLES) * BLOCK_SAMPLES / rate_hz
    stamps += rng.normal(0.0, 1e-6, len(stamps))
    data = write_kiwi_wav((signal + noise).astype(np.complex64), stamps)
    recording = read_kiwi_wav(data)
    return recording, timebase(recording)


def recordings(seconds: float = 6.0):
    rates = (12_001.05, 12_001.22, 12_000.97)
    starts = (1000.0, 1000.4, 999.7)  # they start at different times and overlap in part
    pairs = [
        record(s, i, start_s=start, rate_hz=rate, seconds=seconds)
        for i, (s, rate, start) in enumerate(zip(STATIONS, rates, starts, strict=True))
    ]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def test_pair_delays_are_the_true_propagation_differences():
    recs, bases = recordings()
    truth = [geodesic_m(s.lat, s.lon, *EMITTER) / SPEED_OF_LIGHT_M_S for s in STATIONS]
    for pair in pair_delays(recs, bases, STATIONS):
        expected = truth[pair.a] - truth[pair.b]
        assert pair.delay_s == pytest.approx(expected, abs=max(4 * pair.sigma_s, 2e-6))
        assert pair.windows_used >= pair.windows_total - 2


def test_a_20_25_khz_set_is_correlated_over_windows_as_long_as_at_12_khz(monkeypatch):
    """A KiwiSDR records at 20.25 kHz too: its windows span 0.25 s as at 12 kHz (they were
    6 000 samples whatever the rate: 0.3 s), and its delays are the true ones."""
    recording = synthetic_set(
        np.random.default_rng(5),
        receivers=3,
        seconds=10.0,  # a common span of 5 s or more: whole windows, not shorter ones
        quirks=False,
        snr_db=(60.0, 60.0),
        clock_error_s=0.0,
        sample_rate_hz=20_250,
    )
    recs = [read_kiwi_wav(f) for f in recording.files]
    bases = [timebase(r) for r in recs]
    lengths: list[int] = []
    correlate = window_correlations.peak_delays

    def counted(stretches, pairs, margin, *args):
        lengths.append(len(stretches[0]) - 2 * margin)  # the window itself
        return correlate(stretches, pairs, margin, *args)

    monkeypatch.setattr(window_correlations, "peak_delays", counted)
    truth = [
        geodesic_m(s.lat, s.lon, *recording.emitter) / SPEED_OF_LIGHT_M_S
        for s in recording.stations
    ]
    for pair in pair_delays(recs, bases, recording.stations):
        assert pair.delay_s == pytest.approx(truth[pair.a] - truth[pair.b], abs=1e-6)
    assert 5_060 <= min(lengths) <= 5_065  # 0.25 s at 20 251 Hz


def test_a_short_common_span_is_cut_into_eight_shorter_windows():
    """Three 0.5 s windows of a 2 s span gave the delays' scatter from three samples (95 %
    regions held 70 % of such sets); eight shorter ones cover the same span."""
    recs, bases = recordings(seconds=3.0)
    start, end = recording_sets.overlap(bases)
    assert 2.0 < end - start < 0.5 * (FEWEST_WINDOWS + 1)
    pairs = pair_delays(recs, bases, STATIONS)
    assert all(p.windows_total == FEWEST_WINDOWS for p in pairs)
    long_recs, long_bases = recordings(seconds=12.0)
    longer = pair_delays(long_recs, long_bases, STATIONS)
    assert all(p.windows_total > 2 * FEWEST_WINDOWS for p in longer)  # whole windows


def test_pairs_correlated_a_few_at_a_time_give_the_same_delays(monkeypatch):
    recs, bases = recordings(seconds=3.0)
    together = pair_delays(recs, bases, STATIONS)
    monkeypatch.setattr(correlation_peaks, "_PAIRS_AT_ONCE", 2)  # three pairs: two batches
    apart = pair_delays(recs, bases, STATIONS)
    assert [p.delay_s for p in apart] == pytest.approx([p.delay_s for p in together], abs=1e-15)


def test_the_emitter_is_found_and_lies_in_its_95_percent_ellipse():
    recs, bases = recordings()
    estimate, likelihood = locate(STATIONS, pair_delays(recs, bases, STATIONS))
    error_m = distance_m(estimate.lat, estimate.lon, *EMITTER)
    assert error_m < 2_000.0
    assert contains(estimate, EMITTER[0], EMITTER[1], 0.95)
    assert likelihood.log_likelihood.max() == 0.0


# Three receivers to the emitter's west: their crossing is a narrow peak several coarse steps
# from the coarse grid's best point, which used to be refined where it stood (5-16 km off, chi2
# 5-38 for exact delays).
WEST = (
    Receiver("RX1", 56.0189, 18.1761),
    Receiver("RX2", 52.93443, 18.58981),
    Receiver("RX3", 52.60684, 8.96856),
)
# Two receivers 20 km apart and a third 450 km away: the crossing is narrower than the coarse
# grid's step, and every coarse point near it ranked below a broad ridge near the grid's edge,
# which was reported (964 km off, chi2 39 for exact delays) until the search went on from the
# widened likelihood's peaks.
PAIR_AND_ONE = (
    Receiver("RX1", 46.76865, 15.47840),
    Receiver("RX2", 46.75697, 15.21639),
    Receiver("RX3", 43.47538, 19.82042),
)


@pytest.mark.parametrize(
    ("stations", "emitter"),
    [
        (WEST, (56.159, 24.371)),
        (WEST, (56.16, 24.0)),
        (WEST, (56.2, 25.0)),
        (WEST, (56.3, 23.5)),
        (PAIR_AND_ONE, (45.6438, 16.8103)),
    ],
)
def test_a_narrow_crossing_off_the_coarse_grid_is_found_and_followed_to_its_top(stations, emitter):
    estimate, likelihood = locate(stations, exact_delays(stations, emitter, 0.5e-6))
    assert distance_m(estimate.lat, estimate.lon, *emitter) < 500.0
    assert likelihood.chi2 < 0.2
    assert contains(estimate, emitter[0], emitter[1], 0.95)


def test_both_crossings_are_found_when_the_broad_one_fits_as_well():
    # Three receivers nearly on a line: the emitter's crossing, among them, is narrower than the
    # coarse grid's step and ranked below the broad other one, which fits exactly too, so the
    # search for what fits never looked further: only the crossing 357 km off was reported.
    line = (Receiver("RX1", 53.41643, 24.54186), Receiver("RX2", 53.12096, 19.68788))
    stations = (*line, Receiver("RX3", 53.89539, 14.38982))
    emitter = (53.40538, 23.16941)
    estimate, likelihood = locate(stations, exact_delays(stations, emitter, 1e-6))
    places = [estimate, *(other for other, _ in likelihood.alternatives)]
    assert len(places) == 2
    assert any(contains(place, *emitter, 0.95) for place in places)
    assert min(distance_m(p.lat, p.lon, *emitter) for p in places) < 500.0


def test_delays_that_fix_only_a_line_are_refused_not_located():
    # Two receivers 500 m apart and a third 450 km away: the likelihood is a long ridge; its
    # moments used to be reported as a position thousands of km off.
    stations = (Receiver("A", 50.0, 10.0), Receiver("B", 50.0045, 10.0), Receiver("C", 51.5, 16.0))
    emitter = (50.6, 12.9)
    delays = exact_delays(stations, emitter, 1e-6)
    with pytest.raises(TdoaError, match="do not fix a position.*further than the 600 km"):
        locate(stations, delays)


def test_receivers_on_one_site_are_refused_before_correlating():
    recs, bases = recordings()
    one_site = (STATIONS[0], Receiver("twin", STATIONS[0].lat, STATIONS[0].lon), STATIONS[2])
    with pytest.raises(TdoaError, match="at 2 place.*north, twin"):
        pair_delays(recs, bases, one_site)


def test_too_short_an_overlap_is_refused():
    recs, bases = recordings(seconds=2.5)
    with pytest.raises(TdoaError, match="overlap"):
        pair_delays(recs, bases, STATIONS, min_overlap_s=2.0)


def test_two_receivers_are_not_enough():
    recs, bases = recordings()
    with pytest.raises(TdoaError, match="at least 3"):
        pair_delays(recs[:2], bases[:2], STATIONS[:2])


def test_a_slowly_keyed_signal_gives_unbiased_delays():
    """A keyed signal's correlation peak is broad: correlating two windows of one length would
    pull it towards zero lag by several microseconds; at 60 dB SNR the delays must be exact."""
    recording = synthetic_set(
        np.random.default_rng(3),
        receivers=3,
        seconds=8.0,
        signal="keyed",
        quirks=False,
        snr_db=(60.0, 60.0),
        clock_error_s=0.0,
    )
    recs = [read_kiwi_wav(f) for f in recording.files]
    bases = [timebase(r) for r in recs]
    truth = [
        geodesic_m(s.lat, s.lon, *recording.emitter) / SPEED_OF_LIGHT_M_S
        for s in recording.stations
    ]
    for pair in pair_delays(recs, bases, recording.stations):
        assert pair.delay_s == pytest.approx(truth[pair.a] - truth[pair.b], abs=1e-6)


def test_a_set_with_every_quirk_is_located_within_its_region():
    recording = synthetic_set(
        np.random.default_rng(11), receivers=4, seconds=12.0, signal="modulated", quirks=QUIRKS
    )
    assert set(recording.quirks) == set(QUIRKS)
    solution = solve(recording.files, recording.stations)
    assert distance_m(solution.estimate.lat, solution.estimate.lon, *recording.emitter) < 2_000
    assert solution.holds(*recording.emitter, 0.95)
    described = describe_solution(solution, recording.stations)
    assert described["method"] == "tdoa" and len(described["pairs"]) == 6
    contours = described["likelihood_contours"]
    assert [c["properties"]["confidence"] for c in contours] == [0.68, 0.95]
    assert all(c["geometry"]["coordinates"] for c in contours)


def test_the_likelihood_contours_of_a_gaussian_are_its_ellipses():
    lats = np.linspace(45.0 - 0.05, 45.0 + 0.05, 201)
    lons = np.linspace(9.0 - 0.05, 9.0 + 0.05, 201)
    grid_lat, grid_lon = np.meshgrid(lats, lons, indexing="ij")
    sigma_deg = 0.01
    log_likelihood = -0.5 * (((grid_lat - 45.0) ** 2 + (grid_lon - 9.0) ** 2) / sigma_deg**2)
    features = contour_features(lats, lons, log_likelihood)
    for feature, level in zip(features, (0.68, 0.95), strict=True):
        (ring,) = feature["geometry"]["coordinates"][0:1]
        points = np.array(ring[0])
        radius = np.hypot(points[:, 0] - 9.0, points[:, 1] - 45.0)
        expected = sigma_deg * np.sqrt(-2 * np.log(1 - level))
        assert radius == pytest.approx(expected, rel=0.02)
    png = render_png(lats, lons, log_likelihood, points=[(45.0, 9.0, "peak")])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_receiver_whose_time_is_off_is_named_not_located_against():
    """A receiver whose GPS time is wrong by most of a second shares no signal with the others
    at the same GPS time: a set of three is refused naming it, rather than located from noise
    (two receivers fix no position)."""
    recording = synthetic_set(
        np.random.default_rng(5), receivers=3, seconds=8.0, signal="modulated", quirks=False
    )
    files = recording.files_with(1, rewritten(read_kiwi_wav(recording.files[1]), shift_s=0.8))
    with pytest.raises(TdoaError, match=f"{recording.stations[1].id}: no signal in common"):
        solve(files, recording.stations)


def test_receivers_that_hear_nothing_in_common_are_left_out_while_three_remain():
    # Two of five most of a second off (or deaf to the emitter): the three others locate it. Two
    # of four:
    # two remain, and the set is refused naming both.
    recording = synthetic_set(
        np.random.default_rng(10), receivers=5, seconds=8.0, signal="modulated", quirks=False
    )
    files = list(recording.files)
    for k, off in ((1, 0.8), (3, -0.6)):  # apart from each other too
        files[k] = rewritten(read_kiwi_wav(files[k]), shift_s=off)
    solution = solve(files, recording.stations)
    assert solution.unheard == (1, 3) and solution.excluded is None
    assert {(p.a, p.b) for p in solution.pairs} == {(0, 2), (0, 4), (2, 4)}
    assert len(solution.timebases) == 5 and solution.holds(*recording.emitter, 0.95)
    three = solve([files[k] for k in (0, 2, 4)], [recording.stations[k] for k in (0, 2, 4)])
    assert (solution.estimate.lat, solution.estimate.lon) == (
        three.estimate.lat,
        three.estimate.lon,
    )
    # Among the receivers is judged among all five: the emitter lies inside their hull only.
    assert solution.likelihood.among == (True,) and three.likelihood.among == (False,)
    result = describe_solution(solution, recording.stations)
    assert [left["id"] for left in result["excluded"]] == ["RX2", "RX4"]
    assert [r["frequency_offset_hz"] for r in result["receivers"]] == [0.0, None, 0.0, None, 0.0]
    with pytest.raises(TdoaError, match="RX2, RX4: no signal in common"):
        solve(files[:4], recording.stations[:4])


def test_receivers_found_deaf_once_others_are_left_out_are_named_with_them(monkeypatch):
    # Whether a pair hears a common signal is judged against the best pair, so leaving one
    # receiver out can show another deaf; too few left then, the refusal names every one.
    from inference_worker.core import tdoa

    recording = synthetic_set(np.random.default_rng(3), receivers=4, seconds=4.0, quirks=False)

    def deaf(recordings, bases, stations, **_):
        raise tdoa.DeafReceivers("deaf", [1] if len(stations) == 4 else [0])

    monkeypatch.setattr(tdoa, "pair_delays", deaf)
    with pytest.raises(TdoaError, match="receiver.s. RX1, RX2: no signal in common"):
        solve(recording.files, recording.stations)
