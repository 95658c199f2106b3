"""A set located again without a receiver that hears nothing takes the other pairs' windows from
its first correlation where they lie where they lay
(:mod:`inference_worker.core.window_correlations`): the same solution as the others' alone."""

from __future__ import annotations

from dataclasses import astuple

import numpy as np
import pytest

from inference_worker.core import window_correlations
from inference_worker.core.kiwi_wav import read_kiwi_wav, timebase
from inference_worker.core.tdoa import solve
from inference_worker.core.time_differences import DeafReceivers, pair_delays
from inference_worker.science.kiwi_sets import rewritten, synthetic_set
from inference_worker.science.tdoa_faults import deaf


@pytest.fixture
def correlations(monkeypatch) -> list[int]:
    """How many pairs each window's correlation took, one entry a window correlated."""
    calls: list[int] = []
    correlate = window_correlations.peak_delays

    def counted(stretches, pairs, *args):
        calls.append(len(pairs))
        return correlate(stretches, pairs, *args)

    monkeypatch.setattr(window_correlations, "peak_delays", counted)
    return calls


@pytest.mark.parametrize(
    ("victim", "again"),
    [
        (0, False),  # the others' common span and longest pair stay: nothing correlated again
        (1, True),  # its recording ended first and it was in the longest pair: all again
    ],
)
def test_a_deaf_receiver_is_left_out_as_if_never_sent(correlations, victim, again):
    recording = synthetic_set(
        np.random.default_rng(10), receivers=4, seconds=8.0, signal="modulated", quirks=False
    )
    files = list(recording.files)
    files[victim] = deaf(files[victim], 10)
    recordings = [read_kiwi_wav(f) for f in files]
    with pytest.raises(DeafReceivers):
        pair_delays(recordings, [timebase(r) for r in recordings], recording.stations)
    first = len(correlations)
    correlations.clear()
    solution = solve(files, recording.stations)
    assert solution.unheard == (victim,)
    assert (len(correlations) > first) == again
    rest = [k for k in range(4) if k != victim]
    alone = solve([files[k] for k in rest], [recording.stations[k] for k in rest])
    # the same to rounding: the windows kept from the first correlation went through the BLAS
    # product batched with the deaf receiver's pairs, and its blocking of a larger batch can
    # move a sum's last bit (it did with one BLAS thread on an AMD EPYC)
    np.testing.assert_allclose(
        [(p.delay_s, p.sigma_s) for p in solution.pairs],
        [(p.delay_s, p.sigma_s) for p in alone.pairs],
        rtol=1e-9,
    )
    np.testing.assert_allclose(astuple(solution.estimate), astuple(alone.estimate), rtol=1e-9)


def test_windows_correlated_with_other_frequency_offsets_are_correlated_again(correlations):
    # A set whose receivers are off one another's frequency is correlated three times (as
    # recorded, turned back by the offsets found, then by their drifts): each pass is kept
    # under its own offsets, so the same set again correlates nothing, and its delays are the
    # same to the bit.
    recording = synthetic_set(
        np.random.default_rng(4), receivers=3, seconds=8.0, signal="modulated", quirks=False
    )
    files = recording.files_with(2, rewritten(read_kiwi_wav(recording.files[2]), turn_hz=4.0))
    recordings = [read_kiwi_wav(f) for f in files]
    bases = [timebase(r) for r in recordings]
    known: window_correlations.KnownWindows = {}
    first = pair_delays(recordings, bases, recording.stations, known=known)
    assert first.offsets_hz is not None and abs(first.offsets_hz[2] - 4.0) < 0.1  # turned back
    assert len(known) > 3  # the three pairs kept once a pass
    correlations.clear()
    again = pair_delays(recordings, bases, recording.stations, known=known)
    assert correlations == []
    assert [p.delay_s for p in again] == [p.delay_s for p in first]
    assert again.offsets_hz is not None and np.array_equal(again.offsets_hz, first.offsets_hz)


def test_the_tdoa_benchmark_times_a_set_with_one_receiver_deaf(capsys):
    from tools.bench_tdoa import main as bench

    argv = ["--sets", "1", "--receivers", "5", "--rates", "12000", "--seconds", "6"]
    assert bench([*argv, "--no-one-off", "--deaf", "--retain-mb", "0"]) == 0
    _, header, row = capsys.readouterr().out.strip().splitlines()
    assert header.split()[-3:] == ["one", "deaf", "s"] and float(row.split()[-1]) > 0
