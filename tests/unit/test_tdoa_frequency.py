"""Receivers that hear the signal at slightly different frequencies: each one's offset read, and
the pairs' delays found as if there were none."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from inference_worker.core.frequency_offsets import drift_hz, frequency_offsets, receiver_drifts
from inference_worker.core.geodesy import SPEED_OF_LIGHT_M_S, geodesic_m
from inference_worker.core.tdoa import solve
from inference_worker.core.tdoa_results import describe_solution
from inference_worker.core.time_differences import pair_delays, pair_design

from .test_tdoa import EMITTER, STATIONS, recordings


def test_a_pairs_drift_is_how_fast_its_correlation_turns_from_window_to_window():
    rng = np.random.default_rng(1)
    windows = np.arange(40)
    strength = rng.uniform(0.5, 2.0, (2, 40))
    values = strength * np.exp(2j * np.pi * np.outer([0.4, -0.7], windows * 0.5) + 1.3)
    assert drift_hz(values, 0.5) == pytest.approx([0.4, -0.7])
    # A pair's drift is its first receiver's offset less its second's.
    pairs = [(0, 1), (0, 2), (1, 2)]
    offsets = np.array([0.2, -0.3, 0.5])
    values = np.exp(2j * np.pi * np.outer([offsets[a] - offsets[b] for a, b in pairs], windows / 2))
    heard = np.array([True, True, True])
    found = receiver_drifts(values, pair_design(pairs, 3), heard, 0.5)
    assert found - found.mean() == pytest.approx(offsets - offsets.mean())
    assert receiver_drifts(values, pair_design(pairs, 3), ~heard, 0.5) == pytest.approx(
        [0.0, 0.0, 0.0]
    )


def turned(recording, offset_hz: float):
    """A recording whose signal arrives ``offset_hz`` higher."""
    t = np.arange(len(recording.iq)) / recording.header_rate_hz
    return dataclasses.replace(
        recording, iq=(recording.iq * np.exp(2j * np.pi * offset_hz * t)).astype(np.complex64)
    )


@pytest.mark.parametrize("offset_hz", [3.7, -6.2])
def test_the_search_finds_an_offset_beyond_what_the_drift_can_read(offset_hz):
    recs, bases = recordings()
    recs[2] = turned(recs[2], offset_hz)
    margin, size = 80, 6_000
    centres = [1003.0, 1004.5]
    windows = [
        [
            recording.iq[int((c - base.t0_s) * base.rate_hz) - size // 2 :][:size].astype(complex)
            for recording, base in zip(recs, bases, strict=True)
        ]
        for c in centres
    ]
    limits = np.full((3, 3), float(margin))
    found = frequency_offsets(windows, margin, limits, 12_001.0)
    assert found[0] == 0.0  # the reference
    assert found[1] == pytest.approx(0.0, abs=0.3)
    assert found[2] == pytest.approx(offset_hz, abs=0.3)
    # A receiver that hears nothing in common stands out against no one: no offset.
    noise = np.random.default_rng(4)
    windows[0][1] = windows[1][1] = noise.normal(size=size) + 1j * noise.normal(size=size)
    assert frequency_offsets(windows, margin, limits, 12_001.0)[1] == 0.0


@pytest.mark.parametrize("offset_hz", [0.0, 0.8, 2.0, 4.0, -7.5])
def test_delays_are_true_with_one_receiver_off_the_others_frequency(offset_hz):
    """At 4 Hz the 0.25 s windows keep nothing of that receiver's correlation (0.5 s windows
    nothing at 2 and 4 Hz): it was refused as hearing no signal in common with the others."""
    recs, bases = recordings(seconds=12.0)
    recs[1] = turned(recs[1], offset_hz)
    delays = pair_delays(recs, bases, STATIONS)
    truth = [geodesic_m(s.lat, s.lon, *EMITTER) / SPEED_OF_LIGHT_M_S for s in STATIONS]
    for pair in delays:
        assert pair.delay_s == pytest.approx(truth[pair.a] - truth[pair.b], abs=2e-6)
    assert delays.offsets_hz is not None
    relative = delays.offsets_hz - np.median(delays.offsets_hz)
    assert relative == pytest.approx([0.0, offset_hz, 0.0], abs=0.05)
    if offset_hz == 0.0:  # a set in tune is correlated once, as before
        assert (delays.offsets_hz == 0.0).all()


def test_the_result_says_which_receiver_was_heard_off_frequency():
    from inference_worker.core.kiwi_wav import write_kiwi_wav

    recs, bases = recordings(seconds=12.0)
    recs[0] = turned(recs[0], 2.5)
    files = [write_kiwi_wav(r.iq, r.gps_s, fix_age=r.fix_age) for r in recs]
    solution = solve(files, STATIONS)
    offsets = [r["frequency_offset_hz"] for r in describe_solution(solution, STATIONS)["receivers"]]
    assert offsets == pytest.approx([2.5, 0.0, 0.0], abs=0.05)
