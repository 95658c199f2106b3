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


def fair_limit(waiting: int, running: int, processes: int, limit: int) -> int:
    """The most items a batch started now takes: an even share, among the pool's ``processes``,
    of the items ``waiting`` and those its busy processes are ``running``, at most ``limit``.

    A burst smaller than a batch a process is then spread over the processes instead of going
    mostly to the first one free (a burst of 70, two lone jobs and 68 waiting, ran as batches of
    64 and 4: as long as 64 jobs on one process); under a backlog of at least a batch a process
    the share is the whole ``limit`` and batches stay full.
    """
    share = -(-(max(0, waiting) + max(0, running)) // max(1, processes))
    return max(1, min(limit, share))


class AckRanges:
    """Which acknowledgements of one AMQP channel can travel as one ``multiple`` ack.

    A ``basic.ack`` with ``multiple`` set settles every unsettled delivery tag up to its own, so
    one frame can stand for a whole batch, but only when no older delivery still waits for its
    outcome. Tags on a channel count up from 1; this object is told of each delivery
    (:meth:`received`) and of each one settled (:meth:`plan`, :meth:`forget`). A tag it was
    never told of belongs to a message handled elsewhere and may still be unsettled, so no
    ``multiple`` ack reaches over it: acks above it travel one by one.
    """

    def __init__(self) -> None:
        self.unsettled: set[int] = set()
        self.last_seen = 0
        self.first_unseen: int | None = None
        """The oldest tag delivered to something else: a ``multiple`` ack could settle it."""

    def received(self, tag: int) -> None:
        if tag > self.last_seen + 1 and self.first_unseen is None:
            self.first_unseen = self.last_seen + 1
        self.last_seen = max(self.last_seen, tag)
        self.unsettled.add(tag)

    def forget(self, tag: int) -> None:
        """A delivery settled one by one elsewhere (a message refused as it arrived)."""
        self.unsettled.discard(tag)

    def plan(self, acks: list[int], rejects: list[int]) -> tuple[int | None, list[int]]:
        """Settle ``acks`` and ``rejects`` (the rejects to be sent first): the tag of one
        ``multiple`` ack standing for as many of ``acks`` as it safely can (None when that is
        fewer than two), and the acks to send one by one."""
        self.unsettled.difference_update(rejects)
        self.unsettled.difference_update(acks)
        # The oldest delivery still waiting for its outcome bounds the range (a tag already
        # settled inside it is passed over by the broker).
        bound = min(self.unsettled) if self.unsettled else self.last_seen + 1
        if self.first_unseen is not None:
            bound = min(bound, self.first_unseen)
        covered = [tag for tag in acks if tag < bound]
        if len(covered) < 2:
            return None, list(acks)
        top = max(covered)
        return top, [tag for tag in acks if tag > top]
