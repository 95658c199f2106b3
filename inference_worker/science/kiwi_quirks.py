"""The quirks of real KiwiSDR recordings that synthetic sets
(:mod:`inference_worker.science.kiwi_sets`) are given: a first block stamped 0, stamps that jump
part-way (the receiver's time set again), a fix lost for a block, a file cut mid-block with a
wrong RIFF size, and, when asked for by name, blocks lost on the way."""

from __future__ import annotations

import struct

import numpy as np

from inference_worker.core.kiwi_wav import BLOCK_SAMPLES

QUIRKS = ("zero_first_stamp", "stamp_jump", "lost_fix", "cut_short")
"""Quirks drawn for a set (each with probability one half, for one receiver)."""
NAMED_QUIRKS = (*QUIRKS, "lost_blocks")
"""Quirks a set may be asked for by name: ``lost_blocks`` (three runs of 1-5 s of blocks lost on
the way, the stamps of the rest right) is never drawn, so that drawn sets stay as they were."""


def choose_quirks(rng: np.random.Generator, receivers: int) -> dict[str, int]:
    """Each quirk, with probability one half, for one receiver."""
    return {quirk: int(rng.integers(receivers)) for quirk in QUIRKS if rng.uniform() < 0.5}


def cut_mid_block(data: bytes, rng: np.random.Generator) -> bytes:
    """A recording stopped part-way through its last block, its RIFF size left as 0."""
    cut = len(data) - int(rng.integers(100, 2_000))
    return data[:4] + struct.pack("<I", 0) + data[8:cut]


def lost_blocks(
    rng: np.random.Generator, iq: np.ndarray, stamps: np.ndarray, ages: np.ndarray, rate: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A recording with three runs of 1-5 s of blocks lost on the way (the stream stalled):
    their samples and stamps gone, every other block as it was."""
    kept = np.ones(len(stamps), bool)
    per_second = rate / BLOCK_SAMPLES
    for middle in np.sort(rng.uniform(0.15, 0.85, 3)):
        first = int(middle * len(stamps))
        kept[first : first + max(1, int(rng.uniform(1.0, 5.0) * per_second))] = False
    blocks = iq[: len(stamps) * BLOCK_SAMPLES].reshape(len(stamps), BLOCK_SAMPLES)
    return blocks[kept].ravel(), stamps[kept], ages[kept]
