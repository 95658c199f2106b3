"""Which waiting jobs go to the worker processes now, and together: plain values, no broker."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def take_batches(
    waiting: list[T],
    free_slots: int,
    limit: int,
    alone: Callable[[T], bool],
    size: Callable[[T], int] = lambda _: 0,
    budget: int | None = None,
) -> list[list[T]]:
    """Remove from ``waiting`` the batches to start now and return them.

    At most ``free_slots`` batches (one per idle worker process) of at most ``limit`` items
    each, in arrival order; an item for which ``alone`` is true travels in a batch of its own.
    With a ``budget``, a batch also stops before the ``size`` of its items would pass it (its
    first item goes whatever its size), and the items after wait for the next batch, so none is
    passed over for being large. Nothing waits for company: with a process free, a lone item goes
    at once, and batches grow only while every process is busy.
    """
    batches: list[list[T]] = []
    while waiting and len(batches) < free_slots:
        if alone(waiting[0]):
            batches.append([waiting.pop(0)])
            continue
        batch: list[T] = []
        kept: list[T] = []
        used = 0
        full = False
        for item in waiting:
            if full or alone(item):
                kept.append(item)
                continue
            weight = size(item)
            if batch and budget is not None and used + weight > budget:
                full = True
                kept.append(item)
                continue
            batch.append(item)
            used += weight
            full = len(batch) >= limit
        waiting[:] = kept
        batches.append(batch)
    return batches
