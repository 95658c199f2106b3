"""Synthetic sets of GPS-stamped KiwiSDR recordings of one emitter, for tests, demos and the
TDoA evaluation.

A set is 3 or more receivers 300-1 000 km apart, an emitter inside their region or up to 300 km
outside it, and one KiwiSDR IQ WAV file per receiver as ``kiwirecorder.py -m iq --kiwi-wav``
writes them: the emitter's signal delayed by its travel time along the WGS84 geodesic (or, when
asked, by one hop off an ionospheric layer), at 10-30 dB SNR, sampled by each receiver's own
clock (12 001.0-12 001.3 Hz), blocks stamped with ~1 µs jitter and a fixed error of each
receiver's GPS time (0.3 µs rms, what the estimator allows for), and the quirks real files show:
receivers that start at different times and overlap in part, a first block stamped 0, a receiver
whose stamps jump part-way, a fix lost for a block, a file cut mid-block with a wrong RIFF size
(:mod:`inference_worker.science.kiwi_quirks`; blocks lost on the way when asked for).

The transmitted signal is made once on a fine grid (96 kHz) and read by every receiver at its
own sample times (linear interpolation, 16 times finer than the signal's bandwidth), so delays
are not rounded to samples.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import numpy as np

from inference_worker.core.contract import Receiver
from inference_worker.core.geodesy import (
    EARTH_RADIUS_M,
    SPEED_OF_LIGHT_M_S,
    geodesic_m,
    great_circle_m,
    path_m,
)
from inference_worker.core.kiwi_wav import (
    BLOCK_SAMPLES,
    NO_RECENT_FIX,
    KiwiRecording,
    write_kiwi_wav,
)
from inference_worker.core.time_differences import CLOCK_FLOOR_S
from inference_worker.science.kiwi_quirks import (
    NAMED_QUIRKS,
    choose_quirks,
    cut_mid_block,
    lost_blocks,
)

FINE_RATE_HZ = 96_000.0
SIGNALS = ("keyed", "modulated")
"""The signals of the evaluation sets; ``morse`` (a slowly keyed carrier) can be asked for."""
GPS_START_S = 200_000.0
"""GPS seconds of the week the recordings start near."""


@dataclass(frozen=True)
class SyntheticSet:
    stations: tuple[Receiver, ...]
    files: tuple[bytes, ...]
    names: tuple[str, ...]
    """kiwirecorder-style file names (start, tuned frequency, station)."""
    emitter: tuple[float, float]
    frequency_hz: int
    signal: str
    snr_db: tuple[float, ...]
    quirks: dict[str, str] = field(default_factory=dict)
    """Quirk -> the station that has it."""
    outside_km: float = 0.0
    """How far the emitter is outside the receivers' bounding region (0: inside)."""
    layer_height_m: float = 0.0
    """The reflecting layer's height where the set is heard by skywave (0: along the ground)."""

    def positions(self) -> list[dict[str, float | str]]:
        """The ``receivers`` field of a submission."""
        return [{"id": s.id, "lat": s.lat, "lon": s.lon} for s in self.stations]

    def files_with(self, index: int, data: bytes) -> list[bytes]:
        """The set's files with receiver ``index``'s replaced by ``data``."""
        return [data if k == index else f for k, f in enumerate(self.files)]


def rewritten(
    recording: KiwiRecording,
    *,
    shift_s: float = 0.0,
    turn_hz: float = 0.0,
    gps_s: np.ndarray | None = None,
    fix_age: np.ndarray | None = None,
) -> bytes:
    """``recording`` written again with its header's rate and its blocks kept: its GPS stamps
    ``shift_s`` later (or replaced by ``gps_s``), its samples turned ``turn_hz`` (the signal
    heard that far higher, as by a clock off or along a path's Doppler), its fix ages replaced
    by ``fix_age``."""
    iq = recording.iq
    if turn_hz:
        phase = 2.0 * np.pi * turn_hz * np.arange(len(iq)) / recording.header_rate_hz
        iq = iq * np.exp(1j * phase).astype(np.complex64)
    starts = recording.block_start
    return write_kiwi_wav(
        iq,
        (recording.gps_s if gps_s is None else gps_s) + shift_s,
        header_rate_hz=recording.header_rate_hz,
        fix_age=recording.fix_age if fix_age is None else fix_age,
        block_samples=int(starts[1] - starts[0]) if len(starts) > 1 else len(iq),
    )


def destination(
    lat: float, lon: float, bearing_deg: float, distance_m: float
) -> tuple[float, float]:
    """The point ``distance_m`` from (lat, lon) along ``bearing_deg`` on the sphere."""
    p1, l1, b = math.radians(lat), math.radians(lon), math.radians(bearing_deg)
    d = distance_m / EARTH_RADIUS_M
    p2 = math.asin(math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * math.cos(b))
    l2 = l1 + math.atan2(
        math.sin(b) * math.sin(d) * math.cos(p1), math.cos(d) - math.sin(p1) * math.sin(p2)
    )
    return math.degrees(p2), (math.degrees(l2) + 540.0) % 360.0 - 180.0


def spacing_for(receivers: int) -> tuple[float, float]:
    """How far apart (m) the evaluation and the benchmark place ``receivers``: 300-1 000 km for
    up to five, 100-1 200 km for more (more cannot all lie 300 km apart within 1 000 km)."""
    return (300e3, 1_000e3) if receivers <= 5 else (100e3, 1_200e3)


WHOLE_SETS_MOST = 16
"""Up to this many receivers are drawn as a whole set until every pair fits the spacing (the
draws of earlier releases, so that their evaluations repeat); more are placed one at a time,
each redrawn until it fits those already placed (a whole set of 24 or more 100 km apart almost
never fits at once)."""


def place_receivers(
    rng: np.random.Generator,
    count: int,
    spacing_m: tuple[float, float] = (300e3, 1_000e3),
    tries: int = 10_000,
) -> tuple[Receiver, ...]:
    """``count`` receivers around a random centre in Europe, every pair ``spacing_m`` apart.

    Raises:
        ValueError: no such placement found in ``tries`` draws (too many receivers for the
            spacing).
    """
    centre = (rng.uniform(40.0, 56.0), rng.uniform(-5.0, 25.0))
    radius = (spacing_m[0] * 2 / 3, spacing_m[1] * 0.55)

    def fits(point: tuple[float, float], others: list[tuple[float, float]]) -> bool:
        return all(
            spacing_m[0] <= float(great_circle_m(*point, *other)) <= spacing_m[1]
            for other in others
        )

    points: list[tuple[float, float]] = []
    for _ in range(tries):
        if count <= WHOLE_SETS_MOST:
            bearings = np.sort(rng.uniform(0.0, 360.0, count))
            drawn = [destination(*centre, float(b), float(rng.uniform(*radius))) for b in bearings]
            if all(fits(p, drawn[i + 1 :]) for i, p in enumerate(drawn)):
                points = drawn
        else:
            point = destination(
                *centre, float(rng.uniform(0.0, 360.0)), float(rng.uniform(*radius))
            )
            if fits(point, points):
                points.append(point)
        if len(points) == count:
            return _named(points)
    raise ValueError(
        f"could not place {count} receivers {spacing_m[0] / 1e3:g}-{spacing_m[1] / 1e3:g} km "
        "apart; widen the spacing"
    )


def place_close_pair(
    rng: np.random.Generator, apart_m: float, far_m: float = 500e3
) -> tuple[Receiver, ...]:
    """Three receivers around a random centre in Europe, two of them ``apart_m`` apart (two
    KiwiSDRs of one town, or of one club a few km apart) and the third ``far_m`` from them."""
    first = (rng.uniform(40.0, 56.0), rng.uniform(-5.0, 25.0))
    bearing = float(rng.uniform(0.0, 360.0))
    second = destination(*first, bearing, apart_m)
    third = destination(*first, bearing + float(rng.uniform(45.0, 135.0)), far_m)
    return _named([first, second, third])


def _named(points: Sequence[tuple[float, float]]) -> tuple[Receiver, ...]:
    """Receivers RX1, RX2, … at ``points`` (to 1 m)."""
    return tuple(
        Receiver(f"RX{i + 1}", round(lat, 5), round(lon, 5)) for i, (lat, lon) in enumerate(points)
    )


def place_emitter(
    rng: np.random.Generator, stations: tuple[Receiver, ...], outside_share: float = 0.3
) -> tuple[tuple[float, float], float]:
    """An emitter inside the receivers' region, or (``outside_share`` of the time) up to 300 km
    outside it; returns it and how far outside it is (km)."""
    lats = [s.lat for s in stations]
    lons = [s.lon for s in stations]
    centre = (float(np.mean(lats)), float(np.mean(lons)))
    if rng.uniform() >= outside_share:
        weights = rng.dirichlet(np.ones(len(stations)))
        return (float(weights @ lats), float(weights @ lons)), 0.0
    farthest = max(float(great_circle_m(*centre, s.lat, s.lon)) for s in stations)
    outside_m = float(rng.uniform(20e3, 300e3))
    return destination(*centre, float(rng.uniform(0, 360)), farthest + outside_m), outside_m / 1e3


def transmitted(rng: np.random.Generator, kind: str, seconds: float) -> np.ndarray:
    """The emitter's complex baseband on the fine grid: ``keyed`` (a carrier phase-keyed by
    random data, 100-500 baud, raised-cosine shaped, as many utility and time-signal stations
    send), ``modulated`` (FM by a voice-like noise, ±2.5 kHz deviation) or ``morse`` (a carrier
    keyed on and off at 15-30 words a minute, 6 ms edges: its timing lies in its few edges)."""
    n = int(seconds * FINE_RATE_HZ)
    t = np.arange(n) / FINE_RATE_HZ
    offset_hz = rng.uniform(-1_000.0, 1_000.0)
    carrier = np.exp(2j * np.pi * offset_hz * t)
    if kind == "keyed":
        symbol = int(FINE_RATE_HZ / rng.uniform(100.0, 500.0))
        bits = rng.choice([-1.0, 1.0], size=n // symbol + 2)
        shape = np.hanning(symbol)
        keyed = np.convolve(np.repeat(bits, symbol)[:n], shape / shape.sum(), mode="same")
        return keyed * carrier
    if kind == "morse":
        dot_s = rng.uniform(0.04, 0.08)
        elements = rng.choice([0.0, 1.0], size=int(seconds / dot_s) + 2, p=[0.45, 0.55])
        keying = np.repeat(elements, int(dot_s * FINE_RATE_HZ))[:n]
        edge = np.hanning(int(0.006 * FINE_RATE_HZ))
        return np.convolve(keying, edge / edge.sum(), mode="same") * carrier
    if kind == "modulated":
        voice = rng.normal(size=n)
        spectrum = np.fft.rfft(voice)
        frequencies = np.fft.rfftfreq(n, 1.0 / FINE_RATE_HZ)
        spectrum[(frequencies < 300.0) | (frequencies > 3_000.0)] = 0.0
        voice = np.fft.irfft(spectrum, n)
        voice /= np.max(np.abs(voice))
        phase = 2 * np.pi * np.cumsum(offset_hz + 2_500.0 * voice) / FINE_RATE_HZ
        return np.exp(1j * phase)
    raise ValueError(f"unknown signal {kind!r}; expected keyed, modulated or morse")


def synthetic_set(
    rng: np.random.Generator,
    *,
    receivers: int = 3,
    seconds: float = 30.0,
    signal: str | None = None,
    quirks: bool | Collection[str] = True,
    frequency_hz: int = 77_500,
    snr_db: tuple[float, float] = (10.0, 30.0),
    clock_error_s: float = CLOCK_FLOOR_S,
    spacing_m: tuple[float, float] = (300e3, 1_000e3),
    sample_rate_hz: int = 12_000,
    stations: tuple[Receiver, ...] | None = None,
    layer_height_m: float = 0.0,
    layer_spread_m: float = 0.0,
) -> SyntheticSet:
    """One set of recordings of one emitter; see the module docstring for what varies.
    ``quirks``: True draws each with probability one half, or name the ones wanted.
    ``sample_rate_hz``: the headers' rate (a KiwiSDR records 12 000 or 20 250); each
    receiver's true rate lies 1.0–1.3 Hz above it. ``stations``: these receivers rather than
    ``receivers`` placed ``spacing_m`` apart. ``layer_height_m``: the signal reaches every
    receiver by one hop off an ionospheric layer this high (:func:`~inference_worker.core.geodesy.
    path_m`), not along the ground (0), which the estimator assumes unless told of skywave;
    ``layer_spread_m``: each receiver's path reflected up to this much higher or lower (drawn),
    as a real layer's height differs between its reflection points."""
    if stations is None:
        stations = place_receivers(rng, receivers, spacing_m)
    receivers = len(stations)
    emitter, outside_km = place_emitter(rng, stations)
    kind = signal or str(rng.choice(SIGNALS))
    starts = GPS_START_S + rng.uniform(0.0, 5.0, receivers)
    longest_s = seconds + float(starts.max() - starts.min()) + 0.1
    source = transmitted(rng, kind, longest_s)
    source_t0 = GPS_START_S - 0.05  # GPS time of the fine grid's first sample at the emitter
    fine_t = source_t0 + np.arange(len(source)) / FINE_RATE_HZ
    if isinstance(quirks, bool):
        chosen = choose_quirks(rng, receivers) if quirks else {}
    else:  # these quirks, each for one receiver
        unknown = set(quirks) - set(NAMED_QUIRKS)
        if unknown:
            raise ValueError(f"unknown quirks {sorted(unknown)}; known: {', '.join(NAMED_QUIRKS)}")
        chosen = {quirk: int(rng.integers(receivers)) for quirk in quirks}
    files, names, snrs = [], [], []
    for index, station in enumerate(stations):
        rate = float(rng.uniform(sample_rate_hz + 1.0, sample_rate_hz + 1.3))
        n = int(seconds * rate) // BLOCK_SAMPLES * BLOCK_SAMPLES
        ground = geodesic_m(station.lat, station.lon, *emitter)
        height = layer_height_m
        if layer_spread_m:
            height += float(rng.uniform(-layer_spread_m, layer_spread_m))
        delay = float(path_m(ground, height)) / SPEED_OF_LIGHT_M_S
        at = starts[index] + np.arange(n) / rate - delay
        received = np.interp(at, fine_t, source.real) + 1j * np.interp(at, fine_t, source.imag)
        received *= np.exp(1j * rng.uniform(0, 2 * np.pi))  # each receiver's own carrier phase
        snr = float(rng.uniform(*snr_db))
        power = float(np.mean(np.abs(received) ** 2))
        noise_sd = math.sqrt(power / 10 ** (snr / 10) / 2)
        received += noise_sd * (rng.normal(size=n) + 1j * rng.normal(size=n))
        received *= 0.25 / max(1e-9, float(np.max(np.abs(received))))
        stamps = starts[index] + np.arange(n // BLOCK_SAMPLES) * BLOCK_SAMPLES / rate
        # ~1 µs jitter on every stamp, and a fixed error of the receiver's GPS time
        stamps = stamps + rng.normal(0.0, 1e-6, len(stamps)) + rng.normal(0.0, clock_error_s)
        ages = np.zeros(len(stamps), np.uint8)
        mine = {quirk for quirk, who in chosen.items() if who == index}
        if "zero_first_stamp" in mine:
            stamps[0] = np.nan
        if "lost_fix" in mine:
            ages[int(rng.integers(1, len(stamps)))] = NO_RECENT_FIX
        if "stamp_jump" in mine:  # a late stretch off by a fraction of a second
            jump_at = int(len(stamps) * rng.uniform(0.8, 0.9))
            stamps[jump_at:] += rng.uniform(0.05, 0.5)
        if "lost_blocks" in mine:
            received, stamps, ages = lost_blocks(rng, received, stamps, ages, rate)
        data = write_kiwi_wav(
            received.astype(np.complex64), stamps, fix_age=ages, header_rate_hz=sample_rate_hz
        )
        if "cut_short" in mine:
            data = cut_mid_block(data, rng)
        files.append(data)
        names.append(f"20261130T120000Z_{frequency_hz}_{station.id}_iq.wav")
        snrs.append(round(snr, 1))
    return SyntheticSet(
        stations=stations,
        files=tuple(files),
        names=tuple(names),
        emitter=emitter,
        frequency_hz=frequency_hz,
        signal=kind,
        snr_db=tuple(snrs),
        quirks={q: stations[i].id for q, i in chosen.items()},
        outside_km=round(outside_km, 1),
        layer_height_m=layer_height_m,
    )
