"""The chunks of a KiwiSDR IQ WAV file, walked as real files hold them (:mod:`inference_worker.
core.kiwi_wav` reads the recording from them).

A recording is a ``fmt `` chunk, then, repeated, a ``kiwi`` chunk (the next block's GPS stamp)
and a ``data`` chunk (the block's samples). Sizes are not trusted: a chunk never runs past the
next ``kiwi`` chunk's header, and a ``data`` chunk whose size ends on no chunk runs on to it.
Runs of blocks written as kiwirecorder writes them, every block of one size, are read at once.
"""

from __future__ import annotations

import struct

import numpy as np

NEVER_HAD_FIX = 255
KIWI_STAMP = struct.Struct("<BBII")
"""A ``kiwi`` chunk's body: seconds since the last GPS solution, padding, GPS seconds of the
week, nanoseconds."""
_KIWI_HEADER = b"kiwi" + struct.pack("<I", KIWI_STAMP.size)
_CHUNK_IDS = (b"kiwi", b"data", b"fmt ", b"LIST", b"JUNK", b"PAD ", b"fact", b"id3 ", b"cue ")
"""Chunks a recording may hold: where a ``data`` chunk's size ends on none of them, the size is
damaged."""
_FARTHEST_BLOCK = 1 << 20
"""How far past a damaged ``data`` chunk's size its end is looked for (bytes)."""
_STAMP = np.dtype([("last", "u1"), ("pad", "u1"), ("seconds", "<u4"), ("nanoseconds", "<u4")])
_PAIR_HEAD = 8 + KIWI_STAMP.size + 8
"""A block's bytes before its samples: the ``kiwi`` chunk and the ``data`` chunk's header."""


def walk(data: bytes) -> tuple[list[bytes], list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """The bodies of the file's ``fmt `` chunks, and its blocks: their samples as int16 views
    of ``data`` (I and Q; whole samples; a piece may hold several blocks, one a row), each
    block's sample count and each block's stamp as ``(last, seconds, nanoseconds, stamped)``
    (``stamped`` 0 where no ``kiwi`` chunk came before the block: ``last`` is then
    :data:`NEVER_HAD_FIX`)."""
    position = 12
    formats: list[bytes] = []
    pieces: list[np.ndarray] = []
    lengths: list[np.ndarray] = []
    stamps: list[np.ndarray] = []
    pending: tuple[int, int, int] | None = None
    while position + 8 <= len(data):  # the RIFF size is not trusted: real files lie
        run = _regular_run(data, position)
        if run is not None:  # many blocks as kiwirecorder writes them, taken at once
            samples, run_stamps, position = run
            pieces.append(samples)
            lengths.append(np.full(len(run_stamps), samples.shape[1] // 2))
            stamps.append(run_stamps)
            pending = None
            continue
        chunk_id, body, position = _chunk(data, position)
        if chunk_id == b"fmt ":
            formats.append(body)
        elif chunk_id == b"kiwi" and len(body) >= KIWI_STAMP.size:
            last, _, seconds, nanoseconds = KIWI_STAMP.unpack_from(body)
            pending = (last, seconds, nanoseconds)
        elif chunk_id == b"data":
            whole = len(body) // 4 * 4  # a recording cut mid-block keeps its whole samples
            if whole:
                pieces.append(np.frombuffer(body, "<i2", count=whole // 2))
                lengths.append(np.array([whole // 4]))
                stamp = (*pending, 1) if pending is not None else (NEVER_HAD_FIX, 0, 0, 0)
                stamps.append(np.array([stamp], dtype=np.int64))
            pending = None
    return formats, pieces, lengths, stamps


def scaled(pieces: list[np.ndarray], scale: float) -> np.ndarray:
    """The int16 samples of :func:`walk`'s pieces one after another, times ``scale``, as
    float32: each piece read once, straight from the file's bytes."""
    out = np.empty(sum(piece.size for piece in pieces), np.float32)
    done = 0
    for piece in pieces:
        np.multiply(
            piece, np.float32(scale), out=out[done : done + piece.size].reshape(piece.shape)
        )
        done += piece.size
    return out


def _chunk(data: bytes, position: int) -> tuple[bytes, bytes, int]:
    """The id and body of the chunk at ``position``, and where the next one starts. A size that
    is not trusted is mended, a ``data`` chunk running to the next ``kiwi`` chunk's header as
    kiwirecorder writes them: no chunk runs past that header (a size too large would swallow
    the rest of the file, its headers read as samples), a ``data`` chunk whose size ends on no
    chunk's header runs on to it (a size too small would lose the block's rest, and every later
    block's time with it), and a ``kiwi`` chunk followed by a ``data`` chunk where its 10 bytes
    end is 10 bytes long whatever its header says."""
    chunk_id = data[position : position + 4]
    size = struct.unpack_from("<I", data, position + 4)[0]
    start = position + 8
    if (
        chunk_id == b"kiwi"
        and data[start + KIWI_STAMP.size : start + KIWI_STAMP.size + 4] == b"data"
    ):
        size = KIWI_STAMP.size
    end = start + size + (size & 1)
    following = data.find(_KIWI_HEADER, start, start + size)
    if following < 0 and chunk_id == b"data" and data[end : end + 4] not in (b"", *_CHUNK_IDS):
        following = data.find(_KIWI_HEADER, end, end + _FARTHEST_BLOCK)
    if following >= 0:
        return chunk_id, data[start:following], following
    return chunk_id, data[start : start + size], end


def _regular_run(data: bytes, position: int) -> tuple[np.ndarray, np.ndarray, int] | None:
    """The blocks from ``position`` on that are written as kiwirecorder writes them — a 10-byte
    ``kiwi`` chunk, then a ``data`` chunk of one size, again and again — read at once, as
    :func:`_chunk` would read them one by one: their samples, each one's stamp (as
    :func:`walk` gives it) and where the walk goes on; None where no such block is whole. A
    block is left to :func:`_chunk` where no other such block follows it (its size may need
    mending) and where its bytes hold a ``kiwi`` chunk's header anywhere but at its start (a
    chunk ends there)."""
    head = data[position + 18 : position + _PAIR_HEAD]
    if data[position : position + 8] != _KIWI_HEADER or len(head) < 8 or head[:4] != b"data":
        return None
    size = struct.unpack_from("<I", head, 4)[0]
    pair = _PAIR_HEAD + size
    available = (len(data) - position) // pair
    if size == 0 or size % 4 or available < 2:
        return None
    kiwi, block = np.frombuffer(_KIWI_HEADER, np.uint8), np.frombuffer(head, np.uint8)
    matched = 0
    while matched < available:  # in growing batches: a short run costs little to find
        batch = min(available - matched, max(64, matched))
        rows = np.frombuffer(
            data, np.uint8, count=batch * pair, offset=position + matched * pair
        ).reshape(batch, pair)
        alike = (rows[:, :8] == kiwi).all(axis=1) & (rows[:, 18:_PAIR_HEAD] == block).all(axis=1)
        odd = np.flatnonzero(~alike)
        matched += int(odd[0]) if odd.size else batch
        if odd.size:
            break
    whole = matched if position + matched * pair == len(data) else matched - 1
    end = position + whole * pair
    stray = _first_stray_header(
        np.frombuffer(data, np.uint8, count=end - position, offset=position), pair
    )
    if stray is not None:  # a header among a block's bytes: a chunk ends there
        whole = stray // pair
    if whole < 1:
        return None
    rows = np.frombuffer(data, np.uint8, count=whole * pair, offset=position).reshape(whole, pair)
    stamp = np.ascontiguousarray(rows[:, 8:18]).view(_STAMP)[:, 0]
    stamps = np.column_stack(
        [stamp["last"], stamp["seconds"], stamp["nanoseconds"], np.ones(whole)]
    ).astype(np.int64)
    return rows[:, _PAIR_HEAD:].view("<i2"), stamps, position + whole * pair


def _first_stray_header(run: np.ndarray, pair: int) -> int | None:
    """Where in ``run`` (bytes, blocks of ``pair`` bytes each starting with a ``kiwi`` chunk's
    header) a ``kiwi`` chunk's header first lies anywhere but at a block's start, or None: the
    candidates (a ``ki``) found as 16-bit words at even and at odd offsets, each then compared
    whole. A header overlaps no other, so none reaches from one block into the next's header."""
    ki = int.from_bytes(_KIWI_HEADER[:2], "little")
    even = run[: len(run) // 2 * 2].view("<u2")
    odd = run[1 : 1 + max(0, len(run) - 1) // 2 * 2].view("<u2")
    candidates = np.concatenate([2 * np.flatnonzero(even == ki), 2 * np.flatnonzero(odd == ki) + 1])
    candidates = candidates[(candidates % pair != 0) & (candidates <= len(run) - len(_KIWI_HEADER))]
    if not candidates.size:
        return None
    windows = run[candidates[:, None] + np.arange(len(_KIWI_HEADER))]
    found = candidates[(windows == np.frombuffer(_KIWI_HEADER, np.uint8)).all(axis=1)]
    return int(found.min()) if found.size else None
