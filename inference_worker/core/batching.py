"""Which waiting jobs go to the worker processes now, and together: plain values, no broker."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def take_batches(
    waiting: list[T], free_slots: int, limit: int, alone: Callable[[T], bool]
) -> list[list[T]]:
    """Remove from ``waiting`` the batches to start now and return them.

    At most ``free_slots`` batches (one per idle worker process) of at most ``limit`` items
    each, in arrival order; an item for which ``alone`` is true travels in a batch of its own.
    Nothing waits for company: with a process free, a lone item goes at once, and batches grow
    only while every process is busy.
    """
    batches: list[list[T]] = []
    while waiting and len(batches) < free_slots:
        if alone(waiting[0]):
            batches.append([waiting.pop(0)])
            continue
        batch: list[T] = []
        kept: list[T] = []
        for item in waiting:
            if len(batch) < limit and not alone(item):
                batch.append(item)
            else:
                kept.append(item)
        waiting[:] = kept
        batches.append(batch)
    return batches
