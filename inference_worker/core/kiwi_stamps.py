"""The walk over a KiwiSDR recording's GPS stamps that
:func:`~inference_worker.core.kiwi_wav.timebase` fits its line to: the stretches of stamps on
one line (bad stamps left out, a jump ending a stretch), the stretches joined where blocks were
lost on the way, and seconds of the week continued past a week boundary. Pure numpy."""

from __future__ import annotations

import numpy as np

GPS_WEEK_S = 604_800

LOOK_AHEAD_BLOCKS = 8
"""How many blocks a stamp off the line may be followed by others off it before the line is
taken as having jumped, rather than those stamps as bad."""


def stretches(offsets: np.ndarray, gate_s: float) -> list[list[int]]:
    """The stamps (positions in ``offsets``) of each stretch on one line, in order: stamps off
    the line that it comes back to are left out, one it does not come back to after
    ``LOOK_AHEAD_BLOCKS`` ends the stretch."""
    # A stamp off the one before it breaks the run: between breaks every stamp is on the line
    # of the one before it, and the walk takes such a run at once.
    off_before = np.ones(len(offsets), bool)
    off_before[1:] = ~(np.abs(np.diff(offsets)) < gate_s)
    breaks = np.append(np.flatnonzero(off_before), len(offsets))
    found: list[list[int]] = []
    current: list[int] = []
    position = 0
    while position < len(offsets):
        if not current or (current[-1] == position - 1 and not off_before[position]):
            run_end = int(breaks[np.searchsorted(breaks, position, side="right")])
            current.extend(range(position, run_end))
            position = run_end
            continue
        level = offsets[current[-1]]
        if abs(offsets[position] - level) < gate_s:
            current.append(position)
            position += 1
            continue
        ahead = offsets[position + 1 : position + 1 + LOOK_AHEAD_BLOCKS]
        back = np.flatnonzero(np.abs(ahead - level) < gate_s)
        if len(back):  # bad stamps: the line goes on after them
            position += 1 + int(back[0])
            continue
        found.append(current)  # a jump: a new stretch starts here
        current = []
    found.append(current)
    return [kept for kept in found if kept]


LONGEST_GAP_S = 600.0
"""The most time blocks lost on the way may take for the stretches either side to be joined."""


def chains(
    runs: list[list[int]], offsets: np.ndarray, block_s: float, gate_s: float
) -> list[list[tuple[list[int], int]]]:
    """The stretches ``runs`` (of :func:`stretches`) joined where blocks were lost between
    them: the later one's stamps jump ahead by a whole number of blocks (the receiver's clock
    went on, its samples did not arrive), each stretch with the blocks lost before it since its
    chain's first. A jump of any other size is the receiver's time set again: which side is
    right cannot be told, and the longest chain alone is used."""
    joined: list[list[tuple[list[int], int]]] = []
    for kept in runs:
        if joined:
            before, lost = joined[-1][-1]
            # Levels where the stretches meet: an error in the rate tilts each stretch's own.
            jump_s = float(np.median(offsets[kept[:5]]) - np.median(offsets[before[-5:]]))
            blocks = round(jump_s / block_s)
            if (
                min(len(before), len(kept)) >= 2
                and 1 <= blocks
                and blocks * block_s <= LONGEST_GAP_S
                and abs(jump_s - blocks * block_s) < gate_s
            ):
                joined[-1].append((kept, lost + blocks))
                continue
        joined.append([(kept, 0)])
    return joined


def unwrap_weeks(gps: np.ndarray) -> np.ndarray:
    """Seconds of the week continued past a week boundary (a recording across Sunday 00:00)."""
    out = gps.copy()
    finite = np.isfinite(out)
    jumps = np.zeros(len(out))
    jumps[finite] = np.concatenate([[0.0], np.diff(out[finite])])
    out[finite] += GPS_WEEK_S * np.cumsum(jumps[finite] < -GPS_WEEK_S / 2)
    return out
