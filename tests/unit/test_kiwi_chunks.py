"""The chunk walk reads a run of blocks written as kiwirecorder writes them at once: it must read
every file, damaged or not, exactly as reading its chunks one by one does."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inference_worker.core import kiwi_chunks
from inference_worker.core.kiwi_wav import KiwiWavError, read_kiwi_wav, write_kiwi_wav

BLOCKS = 150  # more than one batch of the run's search (64, then as many as found)
_RNG = np.random.default_rng(7)
_IQ = (0.3 * (_RNG.normal(size=BLOCKS * 512) + 1j * _RNG.normal(size=BLOCKS * 512))).astype(
    np.complex64
)
_STAMPS = 345_600.25 + np.arange(BLOCKS) * 512 / 12_001.17
_FILE = write_kiwi_wav(_IQ, _STAMPS, fix_age=np.arange(BLOCKS) % 256)
_PAIR = 26 + 512 * 4
_FIRST = _FILE.index(b"kiwi")
_HEADS = [_FIRST + k * _PAIR + d for k in range(BLOCKS) for d in range(26)]
"""Every byte of every block's ``kiwi`` chunk and ``data`` chunk header."""


def one_by_one(data: bytes, monkeypatch: pytest.MonkeyPatch) -> object:
    with monkeypatch.context() as patched:
        patched.setattr(kiwi_chunks, "_regular_run", lambda data, position: None)
        return read(data)


def read(data: bytes) -> object:
    try:
        recording = read_kiwi_wav(data)
    except KiwiWavError as exc:
        return str(exc)
    return (
        recording.iq.tobytes(),
        recording.header_rate_hz,
        recording.block_start.tolist(),
        np.nan_to_num(recording.gps_s, nan=-1.0).tolist(),
        recording.fix_age.tolist(),
    )


@settings(max_examples=200, deadline=None)
@given(
    changes=st.lists(st.tuples(st.sampled_from(_HEADS), st.integers(0, 255)), max_size=4),
    headers=st.lists(st.integers(_FIRST, len(_FILE) - 8), max_size=2),
    cut=st.integers(len(_FILE) // 2, len(_FILE)),
)
def test_runs_read_as_chunks_one_by_one_do(changes, headers, cut):
    damaged = bytearray(_FILE)
    for position, value in changes:
        damaged[position] = value
    for position in headers:  # a kiwi chunk's header among the samples, or over a header
        damaged[position : position + 8] = b"kiwi" + struct.pack("<I", 10)
    data = bytes(damaged[:cut])
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert read(data) == one_by_one(data, monkeypatch)


def test_a_whole_file_is_read_as_runs():
    calls = []
    found = kiwi_chunks._regular_run

    def counted(data: bytes, position: int):
        run = found(data, position)
        calls.append(run is not None)
        return run

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(kiwi_chunks, "_regular_run", counted)
        recording = read_kiwi_wav(_FILE)
    assert len(recording.iq) == BLOCKS * 512
    assert calls.count(True) == 1  # one run; the last block is read on its own
