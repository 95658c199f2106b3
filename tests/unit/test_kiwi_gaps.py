"""A KiwiSDR recording whose blocks were lost on the way (the stream stalled: the stamps of the
blocks after a gap jump ahead by the blocks that never arrived) is bridged: every block that
arrived lies on one time base, and no window is cut where samples are missing. A jump of any
other size (the receiver's time set again) still keeps the longest stretch alone."""

from __future__ import annotations

import json

import numpy as np
import pytest

from inference_worker.core.capture import CaptureError
from inference_worker.core.correlation_peaks import arrived
from inference_worker.core.kiwi_stamps import LONGEST_GAP_S
from inference_worker.core.kiwi_wav import (
    BLOCK_SAMPLES,
    read_kiwi_wav,
    timebase,
    write_kiwi_wav,
)
from inference_worker.core.recording_sets import arrived_s, overlap
from inference_worker.core.tdoa import solve
from inference_worker.core.tdoa_capture import TdoaLimits, check_tdoa
from inference_worker.core.tdoa_results import describe_solution
from inference_worker.science.kiwi_sets import synthetic_set

RATE_HZ = 12_001.17
T0_S = 345_600.25


def stamped(blocks: int, lost: list[tuple[int, int]], jitter_s: float = 1e-6):
    """A recording of ``blocks`` blocks with the runs ``(first, count)`` of blocks lost, and
    each block's true first sample (counted with the lost ones)."""
    rng = np.random.default_rng(1)
    kept = np.ones(blocks, bool)
    for first, count in lost:
        kept[first : first + count] = False
    true_start = np.arange(blocks)[kept] * BLOCK_SAMPLES
    stamps = T0_S + true_start / RATE_HZ + rng.normal(0.0, jitter_s, len(true_start))
    iq = (0.1 * rng.normal(size=len(true_start) * BLOCK_SAMPLES)).astype(np.complex64)
    return read_kiwi_wav(write_kiwi_wav(iq, stamps)), true_start


def test_blocks_lost_on_the_way_are_bridged_on_one_time_base():
    recording, true_start = stamped(400, [(100, 7), (250, 40)])
    base = timebase(recording)
    assert base.rate_hz == pytest.approx(RATE_HZ, abs=0.01)
    assert base.used_samples == len(recording.iq)  # every block that arrived is used
    assert len(base.segments) == 3
    assert [lost for _, _, lost in base.segments] == [0, 7 * BLOCK_SAMPLES, 47 * BLOCK_SAMPLES]
    # Each block's first sample, where the recording holds it, is at its true time.
    for block in (0, 150, 399 - 47):
        sample = int(true_start[block])
        assert base.recorded(sample, sample + 10) == block * BLOCK_SAMPLES
        assert float(base.time_of(sample)) == pytest.approx(T0_S + sample / RATE_HZ, abs=2e-6)
    assert base.recorded(101 * BLOCK_SAMPLES, 102 * BLOCK_SAMPLES) is None  # never arrived
    assert base.recorded(99 * BLOCK_SAMPLES, 101 * BLOCK_SAMPLES) is None  # across a gap
    in_gap_s = T0_S + 103 * BLOCK_SAMPLES / RATE_HZ
    assert not arrived(base, in_gap_s, 1_000)
    assert arrived(base, T0_S + 50 * BLOCK_SAMPLES / RATE_HZ, 1_000)


def test_a_jump_of_no_whole_number_of_blocks_keeps_the_longest_stretch():
    recording, _ = stamped(400, [])
    shifted = recording.gps_s.copy()
    shifted[300:] += 0.0131  # the time set again: not a whole number of blocks
    base = timebase(read_kiwi_wav(write_kiwi_wav(recording.iq, shifted, header_rate_hz=12_000)))
    assert base.segments == () and base.end_sample == 300 * BLOCK_SAMPLES


def test_a_gap_longer_than_the_longest_bridged_is_not_bridged():
    blocks = int(LONGEST_GAP_S * RATE_HZ / BLOCK_SAMPLES) + 10
    recording, _ = stamped(120, [])
    gps = recording.gps_s.copy()
    gps[80:] += blocks * BLOCK_SAMPLES / RATE_HZ
    base = timebase(read_kiwi_wav(write_kiwi_wav(recording.iq, gps)))
    assert base.segments == () and base.end_sample == 80 * BLOCK_SAMPLES


def test_a_set_with_blocks_lost_is_located_with_every_block_that_arrived():
    lost = synthetic_set(np.random.default_rng(7601), receivers=3, quirks=["lost_blocks"])
    victim = [s.id for s in lost.stations].index(lost.quirks["lost_blocks"])
    solution = solve(lost.files, lost.stations)
    base = solution.timebases[victim]
    assert base.segments and base.used_samples == base.recording_samples
    result = describe_solution(solution, lost.stations)
    assert result["cautions"] == []  # nothing that arrived went unused
    gaps = [r["lost_s"] for r in result["receivers"]]
    assert gaps[victim] > 3.0 and [g for k, g in enumerate(gaps) if k != victim] == [0.0, 0.0]
    # The windows that reach into a gap are left out: fewer than the span holds.
    assert solution.pairs[0].windows_used < 0.9 * solution.overlap_s / 0.25
    assert solution.holds(*lost.emitter, 0.95)


def test_a_submission_whose_blocks_that_arrived_overlap_too_little_is_refused():
    # The recordings span 6 s together, but one lost 4.4 s of its blocks on the way: the shim
    # refuses it (the worker would find too few windows), and says why.
    sets = synthetic_set(np.random.default_rng(7), receivers=3, seconds=6.0, quirks=False)
    whole = read_kiwi_wav(sets.files[1])
    per_second = 12_000 / BLOCK_SAMPLES
    kept = np.ones(len(whole.gps_s), bool)
    kept[int(0.8 * per_second) : int(5.2 * per_second)] = False
    blocks = whole.iq.reshape(len(kept), BLOCK_SAMPLES)[kept].ravel()
    lossy = write_kiwi_wav(blocks, whole.gps_s[kept])
    files = [sets.files[0], lossy, sets.files[2]]
    base = timebase(read_kiwi_wav(lossy))
    assert len(base.segments) == 2
    bases = [timebase(read_kiwi_wav(f)) for f in files]
    assert 1.0 < arrived_s(bases) < 2.0 < overlap(bases)[1] - overlap(bases)[0]
    fields = {"receivers": json.dumps(sets.positions()), "frequency_mhz": 0.0775}
    with pytest.raises(CaptureError, match=r"blocks that arrived overlap for 1\.\d s"):
        check_tdoa(files, sets.names, fields, TdoaLimits(min_overlap_s=2.0))
    assert check_tdoa(sets.files, sets.names, fields, TdoaLimits(min_overlap_s=2.0))
