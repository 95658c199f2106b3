"""The walk over a KiwiSDR recording's GPS stamps (:mod:`inference_worker.core.kiwi_stamps`)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from inference_worker.core.kiwi_stamps import LOOK_AHEAD_BLOCKS, stretches


def walked_one_stamp_at_a_time(offsets: np.ndarray, gate_s: float) -> list[list[int]]:
    """The stretches as the walk finds them stamp by stamp (what :func:`stretches` did before it
    took runs of stamps on the line of the one before them at once)."""
    stretches: list[list[int]] = []
    current: list[int] = []
    position = 0
    while position < len(offsets):
        level = offsets[current[-1]] if current else None
        if level is None or abs(offsets[position] - level) < gate_s:
            current.append(position)
            position += 1
            continue
        ahead = offsets[position + 1 : position + 1 + LOOK_AHEAD_BLOCKS]
        back = np.flatnonzero(np.abs(ahead - level) < gate_s)
        if len(back):
            position += 1 + int(back[0])
            continue
        stretches.append(current)
        current = []
    stretches.append(current)
    return [kept for kept in stretches if kept]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([0.0, 0.0, 0.0, 1.0, 2.5, -4.0]), st.integers(1, 12)),
        min_size=1,
        max_size=30,
    ),
    st.lists(st.floats(-0.9, 0.9), min_size=1, max_size=400),
)
def test_the_stamps_walk_finds_the_stretches_it_found_stamp_by_stamp(levels, jitter):
    """Lines, jumps, single bad stamps and runs of them, stamps at the gate's edge: the walk
    that takes runs at once keeps the same stamps in the same stretches."""
    offsets = np.repeat([level for level, _ in levels], [count for _, count in levels])
    offsets = offsets + np.resize(np.asarray(jitter), len(offsets))  # ±0.9: some past the gate
    assert stretches(offsets, 1.0) == walked_one_stamp_at_a_time(offsets, 1.0)
