"""What makes recordings unusable together as one TDoA set, whatever each is alone: receivers
at fewer than three places, too short a common span (:func:`overlap`: the GPS time every
receiver covers), and one receiver's recording sent for two receivers.

Pure numpy: the shim and the producer client check a set before it is accepted, the worker
again before it locates one (its message may come from anywhere).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from inference_worker.core.contract import Receiver
from inference_worker.core.geodesy import great_circle_m
from inference_worker.core.kiwi_wav import BLOCK_SAMPLES, KiwiRecording, Timebase

SAME_SITE_M = 300.0
"""Receivers closer than this (1 µs of light travel, about their GPS stamps' jitter) are on one
site: the delay between them says nothing of where the emitter is."""
_MIX = np.random.default_rng(0x4B495749).integers(1, 2**63, BLOCK_SAMPLES, dtype=np.uint64) | 1
"""Odd 64-bit weights of a block's fingerprint: a sum of its samples' bits times these,
modulo 2**64."""


class TdoaError(ValueError):
    """The recordings cannot be located together; the message says why."""


def too_few_sites(stations: Sequence[Receiver]) -> str | None:
    """Why these receivers cannot fix a position, or None: time differences need receivers at
    three or more places (receivers within :data:`SAME_SITE_M` of one another are one place)."""
    site = list(range(len(stations)))
    for a, b in itertools.combinations(range(len(stations)), 2):
        near = great_circle_m(stations[a].lat, stations[a].lon, stations[b].lat, stations[b].lon)
        if near < SAME_SITE_M and site[b] != site[a]:
            old = site[b]
            site = [site[a] if s == old else s for s in site]
    places = sorted(set(site))
    if len(places) >= 3:
        return None
    shared = "; ".join(
        ", ".join(stations[k].id for k in range(len(stations)) if site[k] == place)
        for place in places
        if site.count(place) > 1
    )
    return (
        f"the {len(stations)} receivers are at {len(places)} place(s) ({shared}: within "
        f"{SAME_SITE_M:g} m of one another): time differences need receivers at 3 or more "
        "places; add a receiver at another site"
    )


SHORTEST_BLOCK = 64
"""Recordings whose blocks are shorter than this (samples) are not compared."""


def overlap(timebases: Sequence[Timebase]) -> tuple[float, float]:
    """The GPS time span every receiver covers."""
    start = max(float(tb.time_of(tb.first_sample)) for tb in timebases)
    end = min(float(tb.time_of(tb.end_sample - 1)) for tb in timebases)
    return start, end


def arrived_s(timebases: Sequence[Timebase]) -> float:
    """How much GPS time every receiver's samples cover: the common span less the gaps where
    any receiver's blocks were lost on the way."""
    start, end = overlap(timebases)
    common = [(start, end)]
    for tb in (tb for tb in timebases if tb.segments):
        spans = [
            (float(tb.time_of(first)), float(tb.time_of(stop - 1)))
            for first, stop, _ in tb.segments
        ]
        common = [
            (max(a, c), min(b, d)) for a, b in common for c, d in spans if min(b, d) > max(a, c)
        ]
    return sum(b - a for a, b in common)


def shown_s(seconds: float) -> str:
    """A span as said to the user: rounded down to a tenth, so that 1.96 s of 2 s needed is not
    said to be 2.0 s."""
    return f"{math.floor(max(0.0, seconds) * 10) / 10:.1f}"


def too_short(start: float, end: float, least_s: float) -> str | None:
    """Why a common span from ``start`` to ``end`` is too short to correlate, or None. The span
    is shown rounded down, so that 1.96 s is not said to be 2.0 s of 2 s needed."""
    if end - start >= least_s:
        return None
    return (
        f"the recordings overlap for {shown_s(end - start)} s of GPS time; at least "
        f"{least_s:g} s are needed (record them at the same time)"
    )


def block_prints(recording: KiwiRecording) -> np.ndarray:
    """A 64-bit fingerprint (uint64) of each whole block of ``recording`` whose samples are not
    all the same (a dropout's zeros may match in any two recordings), distinct: two recordings
    that share one share samples. A block is the file's own (512 samples as kiwirecorder writes
    them; of longer ones the first 512, of shorter ones as many as most blocks hold)."""
    starts = recording.block_start
    lengths = np.append(starts[1:], len(recording.iq)) - starts
    size = min(BLOCK_SAMPLES, int(np.median(lengths)))
    if size < SHORTEST_BLOCK:
        return np.zeros(0, np.uint64)
    starts = starts[lengths >= size]
    samples = recording.iq.view(np.uint64)  # a sample's I and Q bits
    if np.array_equal(starts, np.arange(len(starts)) * size):  # every block of one size
        blocks = samples[: len(starts) * size].reshape(-1, size)
    else:
        blocks = samples[starts[:, None] + np.arange(size)]
    prints = np.einsum("ij,j->i", blocks, _MIX[:size])  # no product array, a third the time
    # A block of one value prints as that value times the weights' sum: only blocks that print
    # so are looked at sample by sample.
    alike = np.flatnonzero(prints == blocks[:, 0] * _MIX[:size].sum())
    varied = np.ones(len(prints), bool)
    varied[alike] = (blocks[alike] != blocks[alike, :1]).any(axis=1)
    return np.unique(prints[varied])


def repeated_recording(stations: Sequence[Receiver], prints: Sequence[np.ndarray]) -> str | None:
    """Why these recordings (their :func:`block_prints`, in the order of ``stations``) cannot
    be the receivers' own, or None: two of them share a block of samples — one file sent for
    two receivers, or two pieces of one recording (no two receivers record the same noise) —
    which would fix their delay at exactly 0 and the emitter on the line halfway between
    them."""
    if len(prints) < 2:
        return None
    values = np.concatenate(prints)
    owners = np.repeat(np.arange(len(prints)), [len(p) for p in prints])
    order = np.argsort(values, kind="stable")
    shared = np.flatnonzero(values[order][1:] == values[order][:-1])
    if len(shared) == 0:
        return None
    a, b = sorted(int(owners[order[k]]) for k in (shared[0], shared[0] + 1))
    return (
        f"receivers {stations[a].id} and {stations[b].id} were sent the same recording (their "
        "files share samples): each receiver's own recording is needed (was one file sent "
        "twice, or one recording cut in two?)"
    )
