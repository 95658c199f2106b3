"""KiwiSDR IQ recordings with GPS time, as ``kiwirecorder.py -m iq --kiwi-wav`` writes them.

RIFF/WAVE with a ``fmt `` chunk (PCM, 2 channels I and Q, 16-bit, nominally 12 000 Hz), then,
repeated: a ``kiwi`` chunk of 10 bytes — ``u8`` seconds since the receiver's last GPS solution
(254: that long or longer, 255: never had one), ``u8`` padding, ``u32`` GPS seconds of the
week, ``u32`` nanoseconds: the GPS time of the next block's first sample — and a ``data`` chunk
of 512 I/Q pairs of little-endian int16.

The reader takes what real files hold: a RIFF size that is wrong or zero (a recording cut short),
a last block cut mid-way, a chunk whose size is damaged (a block read up to the next ``kiwi``
chunk), chunks it does not know, a first block stamped 0 (no time yet). The true sample rate
differs per receiver (about 12 001.0–12 001.3 Hz) and comes from the stamps
(:func:`timebase`), which also leaves out single bad stamps, bridges blocks lost on the way
and finds the consistent part of a file whose stamps jump.
:mod:`inference_worker.core.kiwi_chunks` walks the chunks, :mod:`inference_worker.core.kiwi_stamps`
the stamps. The writer makes test data.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from inference_worker.core.kiwi_chunks import KIWI_STAMP, NEVER_HAD_FIX, scaled, walk
from inference_worker.core.kiwi_stamps import GPS_WEEK_S, chains, stretches, unwrap_weeks

BLOCK_SAMPLES = 512
NOMINAL_RATE_HZ = 12_000
NO_RECENT_FIX = 254
CLOCK_DRIFT = 1e-7
"""How fast a KiwiSDR's time may drift from GPS time between GPS solutions (seconds a second:
0.1 ppm, an assumed bound on its sample clock's frequency error once corrections stop). A stamp
whose solution is ``a`` seconds old may be off by ``CLOCK_DRIFT * a``, 6 µs after a minute."""
FULL_SCALE = 32_768.0


class KiwiWavError(ValueError):
    """The file is not a usable KiwiSDR IQ recording; the message says why."""


@dataclass(frozen=True)
class KiwiRecording:
    """The samples of one recording and the GPS stamp of each block."""

    iq: np.ndarray
    """complex64 samples, full scale 1.0."""
    header_rate_hz: int
    """The rate the header claims; the true one comes from :func:`timebase`."""
    block_start: np.ndarray
    """Index in ``iq`` of each stamped block's first sample."""
    gps_s: np.ndarray
    """GPS seconds of the week of each block's first sample; NaN where the block has no time."""
    fix_age: np.ndarray
    """The ``last`` byte of each block: seconds since the last GPS solution (254: 254 or more,
    255: never had one)."""


@dataclass(frozen=True)
class Timebase:
    """Sample index -> GPS time over the consistent part of a recording.

    Where blocks were lost on the way (the stamps jump by a whole number of blocks and go on on
    one line), the samples are counted as if they had arrived: a sample's index here is its
    index in the recording plus the samples lost before it (:attr:`segments`)."""

    rate_hz: float
    t0_s: float
    """GPS seconds of the week of sample 0 (unwrapped: may pass one week)."""
    first_sample: int
    end_sample: int
    """The samples ``[first_sample, end_sample)`` lie on this timebase."""
    rejected_blocks: int
    """Stamped blocks off the line (jumps, no time, no fix), left out."""
    residual_s: float
    """RMS distance of the kept stamps from the line."""
    fix_age_s: int = 0
    """The oldest GPS solution among the kept stamps (seconds, the blocks' ``last`` byte; 253
    at most). Between solutions a KiwiSDR carries its time on its own sample clock: the stamps
    stay on their line, so an error that grows with that age does not show in ``residual_s``."""
    freshest_fix_s: int = 0
    """The newest GPS solution among the kept stamps (seconds): the fit leans on the stamps of
    fresh solutions, and where none is fresh, ``CLOCK_DRIFT`` times this age is how far the
    whole time base may be off."""
    recording_samples: int = 0
    """How many samples the recording holds: those outside ``[first_sample, end_sample)`` have
    no time consistent with the rest and are not used."""
    segments: tuple[tuple[int, int, int], ...] = ()
    """Where blocks were lost: each stretch received whole as ``(first, end, lost)``, its
    samples ``[first, end)`` (counted with the lost ones) the recording's ``[first - lost, end -
    lost)``; between stretches, samples that did not arrive. Empty where none were lost."""

    def time_of(self, sample: np.ndarray | float) -> np.ndarray | float:
        return self.t0_s + np.asarray(sample) / self.rate_hz

    def clock_sigma_s(self, floor_s: float) -> float:
        """Uncertainty of this time base mid-span: its stamps' scatter, ``floor_s`` (what they
        do not show), and its drift since its freshest GPS solution (:data:`CLOCK_DRIFT`)."""
        blocks = max(1, self.used_samples // BLOCK_SAMPLES)
        lapse = CLOCK_DRIFT * self.freshest_fix_s
        return math.sqrt((self.residual_s / math.sqrt(blocks)) ** 2 + floor_s**2 + lapse**2)

    @property
    def used_samples(self) -> int:
        """How many of the recording's samples lie on this timebase."""
        if not self.segments:
            return self.end_sample - self.first_sample
        return sum(end - first for first, end, _ in self.segments)

    @property
    def lost_samples(self) -> int:
        """How many samples of ``[first_sample, end_sample)`` never arrived (or are unused)."""
        return self.end_sample - self.first_sample - self.used_samples

    def recorded(self, start: int, stop: int) -> int | None:
        """Where the samples ``[start, stop)`` (counted with the lost ones) lie in the
        recording, or None where they do not all arrive (a stretch's outer edges open: past
        them the recording itself ends)."""
        if not self.segments:
            return start
        last = len(self.segments) - 1
        for k, (first, end, lost) in enumerate(self.segments):
            if (k == 0 or first <= start) and (k == last or stop <= end):
                return start - lost
        return None


def read_kiwi_wav(data: bytes) -> KiwiRecording:
    """Read a KiwiSDR IQ WAV file.

    Raises:
        KiwiWavError: not a RIFF/WAVE file, not 16-bit 2-channel PCM, or no GPS stamps at all.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise KiwiWavError("not a WAV file (no RIFF/WAVE header)")
    formats, pieces, lengths, stamps = walk(data)
    rate = None
    for body in formats:
        rate = _check_format(body)
    if rate is None:
        raise KiwiWavError("the WAV file has no fmt chunk")
    if not pieces:
        raise KiwiWavError("the WAV file holds no samples")
    stamp = np.concatenate(stamps)
    stamped = stamp[:, 3] == 1
    if not stamped.any():
        raise KiwiWavError(
            "the recording has no GPS timestamps: record it with kiwirecorder.py -m iq --kiwi-wav"
        )
    raw = scaled(pieces, 1 / FULL_SCALE)  # exact: a power of two
    block_lengths = np.concatenate(lengths)
    fix_age = stamp[:, 0].astype(np.uint8)
    seconds = stamp[:, 1].astype(np.float64)
    nanoseconds = stamp[:, 2].astype(np.float64)
    gps = seconds + nanoseconds * 1e-9
    no_time = (seconds == 0) & (nanoseconds == 0) | (fix_age == NEVER_HAD_FIX)
    gps[no_time | ~stamped] = np.nan
    return KiwiRecording(
        iq=raw.view(np.complex64),
        header_rate_hz=rate,
        block_start=np.concatenate([[0], np.cumsum(block_lengths)[:-1]]).astype(np.int64),
        gps_s=gps,
        fix_age=fix_age,
    )


def _check_format(body: bytes) -> int:
    if len(body) < 16:
        raise KiwiWavError("the fmt chunk is too short")
    audio_format, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", body)
    if audio_format != 1 or channels != 2 or bits != 16:
        raise KiwiWavError(
            f"not a KiwiSDR IQ recording: format {audio_format}, {channels} channel(s), {bits} "
            "bits (expected PCM, 2 channels I/Q, 16 bits)"
        )
    return int(rate)


def timebase(recording: KiwiRecording, tolerance_s: float = 20e-6) -> Timebase:
    """The sample rate and GPS time of sample 0, fitted to the stamps that agree with each other.

    Stamps of 0 or without a fix are left out. The stamps are walked in order: one that leaves
    the line and comes back to it within a few blocks is a bad stamp, left out of the fit while
    its samples stay (the line agreeing on both sides says none were lost); one after which the
    line does not come back is a jump. Where the stamps jump ahead by a whole number of blocks
    and go on on one line, those blocks were lost on the way and the stretches either side are
    joined (:attr:`Timebase.segments`); any other jump is the receiver's time set again, and
    the longest chain of stretches is kept, as its own recording would be, instead of dropping
    the receiver. "On the line" means within ``tolerance_s`` or five times the stamps' own
    jitter, whichever is larger, so a stamp off by a tenth of a millisecond no longer pulls the
    fit by microseconds (hundreds of metres of range). The line is fitted with each stamp
    weighted by how far its GPS solution's age lets it drift (``CLOCK_DRIFT``), so the stamps of
    a lapsed solution, on their line but drifting off GPS time, give way to fresh ones.

    Raises:
        KiwiWavError: fewer than two consistent stamped blocks.
    """
    gps = unwrap_weeks(recording.gps_s)
    start = recording.block_start.astype(np.float64)
    usable = np.isfinite(gps) & (recording.fix_age != NO_RECENT_FIX)
    index = np.flatnonzero(usable)
    if len(index) < 2:
        raise KiwiWavError("the recording has fewer than two blocks with a usable GPS time")
    # Rate between neighbouring stamped blocks: the median is that of the consistent stretches.
    steps = np.diff(gps[index]) / np.diff(start[index])
    rate = (
        1.0 / float(np.median(steps[(steps > 0) & np.isfinite(steps)]))
        if np.any(steps > 0)
        else 0.0
    )
    if not 1_000.0 < rate < 1_000_000.0:
        raise KiwiWavError("the GPS stamps do not advance with the samples")
    offsets = gps[index] - start[index] / rate  # t0 implied by each stamp: flat on the line
    jitter = 1.4826 * float(np.median(np.abs(np.diff(offsets)))) / np.sqrt(2.0)
    gate_s = max(tolerance_s, 5.0 * jitter)
    block = int(np.median(np.diff(recording.block_start))) if len(start) > 1 else BLOCK_SAMPLES
    chain = max(
        chains(stretches(offsets, gate_s), offsets, block / rate, gate_s),
        key=lambda joined: sum(kept[-1] - kept[0] for kept, _ in joined),
    )
    inliers = np.concatenate([kept for kept, _ in chain]).astype(np.int64)
    lost = np.concatenate([np.full(len(kept), blocks * block) for kept, blocks in chain])
    keep = index[inliers]
    if len(keep) < 2:
        raise KiwiWavError("the recording has fewer than two consistent GPS stamps")
    ages = recording.fix_age[keep].astype(np.float64)
    drift = np.hypot(max(jitter, 1e-7), CLOCK_DRIFT * ages)  # each stamp's own uncertainty
    weights = None if np.all(ages == ages[0]) else 1.0 / drift  # equal ages: a plain fit
    counted = start[keep] + lost  # as if the lost blocks had arrived
    slope, intercept = np.polyfit(counted, gps[keep], 1, w=weights)
    residual = gps[keep] - (intercept + slope * counted)
    segments = []
    for kept, blocks in chain:
        first, last = int(index[kept[0]]), int(index[kept[-1]])
        end = int(recording.block_start[last + 1]) if last + 1 < len(start) else len(recording.iq)
        shift = blocks * block
        segments.append((int(recording.block_start[first]) + shift, end + shift, shift))
    return Timebase(
        rate_hz=float(1.0 / slope),
        t0_s=float(intercept),
        first_sample=segments[0][0],
        end_sample=segments[-1][1],
        rejected_blocks=len(start) - len(keep),
        residual_s=float(np.sqrt(np.mean(residual**2))),
        fix_age_s=int(ages.max()),
        freshest_fix_s=int(ages.min()),
        recording_samples=len(recording.iq),
        segments=tuple(segments) if len(segments) > 1 else (),
    )


def write_kiwi_wav(
    iq: np.ndarray,
    gps_s: np.ndarray,
    *,
    header_rate_hz: int = NOMINAL_RATE_HZ,
    fix_age: np.ndarray | None = None,
    block_samples: int = BLOCK_SAMPLES,
) -> bytes:
    """A KiwiSDR IQ WAV file of ``iq`` (complex, full scale 1.0) in blocks of ``block_samples``
    samples, block ``k`` stamped ``gps_s[k]`` (GPS seconds of the week; NaN writes a 0 stamp)."""
    samples = np.clip(np.round(np.stack([iq.real, iq.imag], axis=-1) * FULL_SCALE), -32768, 32767)
    pcm = samples.astype("<i2").tobytes()
    blocks = -(-len(iq) // block_samples)
    if len(gps_s) < blocks:
        raise ValueError(f"{blocks} blocks need {blocks} stamps; got {len(gps_s)}")
    ages = np.zeros(blocks, np.uint8) if fix_age is None else np.asarray(fix_age, np.uint8)
    body = bytearray(b"WAVE")
    body += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 2, header_rate_hz, header_rate_hz * 4, 4, 16)
    for k in range(blocks):
        stamp = gps_s[k]
        seconds, nanoseconds = (
            (0, 0) if not np.isfinite(stamp) else divmod(round(stamp * 1e9), 10**9)
        )
        body += b"kiwi" + struct.pack("<I", KIWI_STAMP.size)
        body += KIWI_STAMP.pack(int(ages[k]), 0, int(seconds) % GPS_WEEK_S, int(nanoseconds))
        chunk = pcm[k * block_samples * 4 : (k + 1) * block_samples * 4]
        body += b"data" + struct.pack("<I", len(chunk)) + chunk
    return b"RIFF" + struct.pack("<I", len(body)) + bytes(body)
