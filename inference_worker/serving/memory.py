"""How much freed memory a worker or shim process keeps for itself (the C allocator's
thresholds)."""

from __future__ import annotations

import ctypes

# glibc's mallopt parameters, and the largest mmap threshold it accepts on 64-bit systems.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024


def retain_freed_memory(megabytes: int) -> bool:
    """Have the C allocator keep up to ``megabytes`` of freed memory for the next allocations
    and serve blocks up to 32 MB from it, instead of returning them to the system.

    By default glibc maps each block above 128 kB afresh and gives a freed heap top back, so
    every batch of 1 MB captures (and their features' temporaries), and every 1 MB upload the
    shim reads, faults its pages in again: at 192 kHz a fifth of a worker process's CPU and
    a third of a shim process's went to page faults. Every thread allocates from the one main
    heap, where the threshold holds: a thread's own arena gives back a heap of its as soon as
    it is empty, whatever the threshold, so a shim thread taking a 12-receiver TDoA set (29.5
    MB at 20.25 kHz, ~90 MB live while it is checked) faulted ~100 MB in again for each one.
    (The threads of a process share the GIL: they seldom call the allocator at once.) The cost
    is that a process keeps the memory of its largest moment. Returns whether it took effect
    (only with glibc; 0 leaves the defaults).
    """
    if megabytes <= 0:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
        and mallopt(_M_TRIM_THRESHOLD, megabytes * 1024 * 1024)
        and mallopt(_M_ARENA_MAX, 1)
    )
