"""TDoA sets with one receiver at fault, for the evaluation (``tools/evaluate_tdoa.py``): its
GPS time broken (no time, no fix ever, 0.8 s off), which must be refused naming the receiver or,
where three or more others remain, left out of the located set (``Solution.unheard``);
off by microseconds, which the fit must notice or widen for; a lapsed GPS solution, off by what
its age allows, which the fix ages must account for; its frequency off the others'; and two
receivers of three a few km apart, which leave one useful baseline; and every receiver hearing
the emitter by skywave, which the method does not model; one receiver's blocks lost on the
way in three runs, which its time base must bridge; and one receiver deaf to the emitter
(:func:`deaf`), which must be left out as if it had not been sent.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from inference_worker.core.capture import CaptureError
from inference_worker.core.ellipse import distance_m
from inference_worker.core.kiwi_wav import (
    CLOCK_DRIFT,
    NEVER_HAD_FIX,
    NO_RECENT_FIX,
    read_kiwi_wav,
    write_kiwi_wav,
)
from inference_worker.core.tdoa import Solution, solve
from inference_worker.core.tdoa_capture import TdoaLimits, check_tdoa
from inference_worker.core.tdoa_locate import locate
from inference_worker.core.tdoa_results import skywave_caution
from inference_worker.core.time_differences import TdoaError
from inference_worker.science.kiwi_sets import (
    SyntheticSet,
    place_close_pair,
    rewritten,
    synthetic_set,
)

BAD_KINDS = ("no GPS time", "fix never acquired", "time off by 0.8 s")


def deaf(data: bytes, seed: int) -> bytes:
    """The KiwiSDR recording ``data`` with noise of its samples' power instead of them, its
    stamps kept: a receiver that does not hear the emitter."""
    recording = read_kiwi_wav(data)
    rng = np.random.default_rng(seed)
    n = len(recording.iq)
    scale = float(np.std(recording.iq)) / np.sqrt(2)
    noise = (rng.standard_normal(n) + 1j * rng.standard_normal(n)) * scale
    starts = recording.block_start
    return write_kiwi_wav(
        noise.astype(np.complex64),
        recording.gps_s,
        header_rate_hz=recording.header_rate_hz,
        fix_age=recording.fix_age,
        block_samples=int(starts[1] - starts[0]) if len(starts) > 1 else n,
    )


def one_bad_set(seed: int) -> dict[str, object]:
    """A set with one receiver's GPS time missing or wrong: it must be refused, naming it."""
    rng = np.random.default_rng(seed)
    recording = synthetic_set(rng, receivers=int(rng.integers(3, 6)), seconds=10.0)
    kind = BAD_KINDS[seed % len(BAD_KINDS)]
    victim = int(rng.integers(len(recording.stations)))
    original = read_kiwi_wav(recording.files[victim])
    blocks = len(original.gps_s)
    if kind == "no GPS time":
        bad = rewritten(original, gps_s=np.full(blocks, np.nan))
    elif kind == "fix never acquired":
        never = np.full(blocks, NEVER_HAD_FIX)
        bad = rewritten(original, gps_s=np.nan_to_num(original.gps_s), fix_age=never)
    else:
        bad = rewritten(original, shift_s=0.8)
    files = recording.files_with(victim, bad)
    fields = {"receivers": recording.positions(), "frequency_mhz": recording.frequency_hz / 1e6}
    name = recording.stations[victim].id
    try:
        check_tdoa(files, recording.names, fields, TdoaLimits())
        solution = solve(files, recording.stations)
    except (CaptureError, TdoaError) as exc:
        stage = (
            "refused at submission (422)"
            if isinstance(exc, CaptureError)
            else "failed in the worker"
        )
        return {"kind": kind, "outcome": stage, "names_receiver": name in str(exc)}
    left_out = victim in solution.unheard
    return {
        "kind": kind,
        "outcome": "left out" if left_out else None,
        "names_receiver": left_out,
        "held": solution.holds(*recording.emitter, 0.95),
    }


ODD_OFFSETS_S = (0.0, 10e-6, 30e-6)
ODD_COUNTS = ("failed", "beyond", "excluded", "right_one", "widened", "held", "held_before")


def one_odd_set(job: tuple[int, int, float]) -> dict[str, object]:
    """Four or five receivers, one of them (drawn) with its GPS time ``offset`` off: is the fit
    beyond its bound, is a receiver left out (the right one?) or are the delays' uncertainties
    widened, and does the region hold the emitter, as the delays were measured and now."""
    seed, receivers, offset = job
    rng = np.random.default_rng(seed)
    recording = synthetic_set(rng, receivers=receivers, seconds=10.0)
    victim = int(rng.integers(receivers))
    wrong = read_kiwi_wav(recording.files[victim])
    files = recording.files_with(victim, rewritten(wrong, shift_s=offset))
    try:
        solution = solve(files, recording.stations)
    except TdoaError:
        return {"receivers": receivers, "offset": offset, "failed": True}
    odd, widened = solution.excluded, solution.likelihood.widened > 1
    if odd or widened:  # otherwise already located with everyone as measured
        everyone, likelihood = locate(recording.stations, solution.pairs)
        before = dataclasses.replace(solution, estimate=everyone, likelihood=likelihood)
    else:
        before = solution
    return {
        "receivers": receivers,
        "offset": offset,
        "failed": False,
        "beyond": before.likelihood.chi2 > before.chi2_bound,
        "excluded": odd is not None,
        "right_one": odd is not None and odd.index == victim,
        "widened": widened,
        "held_before": before.holds(*recording.emitter, 0.95),
        "held": solution.holds(*recording.emitter, 0.95),
    }


LAPSES_S = (100, 200)
"""How old one receiver's GPS solution is in the lapsed sets (seconds)."""
LAPSE_COUNTS = ("failed", "beyond", "widened", "excluded", "held")


def one_lapsed_set(job: tuple[int, int, int, bool]) -> dict[str, object]:
    """Three to five receivers, one of them (drawn) without a GPS solution for ``lapse`` seconds
    and its time off by as much as that lapse allows (``CLOCK_DRIFT``, either way): located with
    the lapse in its blocks' fix ages (``told``) or with ages of 0, as a file that hid it."""
    seed, receivers, lapse, told = job
    rng = np.random.default_rng(seed)
    recording = synthetic_set(rng, receivers=receivers, seconds=10.0)
    victim = int(rng.integers(receivers))
    off = CLOCK_DRIFT * lapse * (1 if rng.random() < 0.5 else -1)
    wrong = read_kiwi_wav(recording.files[victim])
    no_fix = wrong.fix_age >= NO_RECENT_FIX
    ages = np.where(no_fix, wrong.fix_age, lapse if told else 0).astype(np.uint8)
    files = recording.files_with(victim, rewritten(wrong, shift_s=off, fix_age=ages))
    row: dict[str, object] = {"receivers": receivers, "lapse": lapse, "told": told}
    try:
        solution = solve(files, recording.stations)
    except TdoaError:
        return {**row, "failed": True}
    return {
        **row,
        "beyond": solution.likelihood.chi2 > solution.chi2_bound,
        "widened": solution.likelihood.widened > 1,
        "excluded": solution.excluded is not None,
        "held": solution.holds(*recording.emitter, 0.95),
    }


DETUNES_HZ = (0.0, 1.0, 2.0, 5.0, 9.5)
"""How far one receiver hears the signal off the others' in the detuned sets (Hz; 0: in tune,
the same sets' yardstick)."""


def one_detuned_set(job: tuple[int, float]) -> dict[str, object]:
    """Four receivers over 20 s, one of them (drawn) hearing the signal ``offset`` Hz off the
    others (up or down, drawn): its samples turned by that much, as a clock off after a GPS
    lapse or a path's Doppler would. Located as it is: the error, whether the 95 % region holds
    the emitter, and the offset the delays found for that receiver."""
    seed, offset = job
    rng = np.random.default_rng(seed)
    recording = synthetic_set(rng, receivers=4, seconds=20.0)
    victim = int(rng.integers(4))
    offset *= 1 if rng.random() < 0.5 else -1
    turned = rewritten(read_kiwi_wav(recording.files[victim]), turn_hz=offset)
    files = recording.files_with(victim, turned)
    row: dict[str, object] = {"seed": seed, "offset": abs(offset)}
    try:
        solution = solve(files, recording.stations)
    except TdoaError:
        return {**row, "failed": True}
    found = solution.pairs.offsets_hz
    others = None if found is None else np.nanmedian(np.delete(found, victim))
    relative = 0.0 if found is None else float(found[victim] - others)
    return {
        **row,
        **_how_near(solution, recording),
        "found_within_0_1_hz": abs(relative - offset) <= 0.1,
    }


CLOSE_APART_KM = (1.0, 5.0, 20.0, 100.0)
"""How far apart two of three receivers lie in the close sets (the third 500 km away)."""


def one_close_set(job: tuple[int, float]) -> dict[str, object]:
    """Three receivers over 30 s, two of them ``apart_km`` apart and the third 500 km away:
    located, or failed (a line of positions rather than a point, or another reason), and
    whether the 95 % region holds the emitter."""
    seed, apart_km = job
    rng = np.random.default_rng(seed)
    stations = place_close_pair(rng, apart_km * 1e3)
    recording = synthetic_set(rng, stations=stations, seconds=30.0)
    row: dict[str, object] = {"seed": seed, "apart_km": apart_km}
    try:
        solution = solve(recording.files, recording.stations)
    except TdoaError as exc:
        return {**row, "failed": "line" if "line of positions" in str(exc) else str(exc)}
    return {
        **row,
        **_how_near(solution, recording),
    }


SKYWAVE_COUNTS = (3, 4, 5)
"""Receivers a set in the skywave sets."""


def one_skywave_set(job: tuple[int, float], spread_m: float = 0.0) -> dict[str, object]:
    """Three to five receivers over 20 s hearing the emitter by one hop off a layer 250-350 km
    high (drawn; each path's reflection ``spread_m`` higher or lower, drawn), as at HF over
    these distances. Located with ground-wave paths (the default): the error, whether the 95 %
    region holds the emitter, whether the fit noticed (beyond its bound: widened, or a receiver
    left out) and whether the result cautions about skywave (at 10 MHz); and with skywave
    paths (``propagation="skywave"``): the same, ``sky_`` before each, and whether its 68 %
    region holds the emitter."""
    seed, receivers = job
    rng = np.random.default_rng(seed)
    height = float(rng.uniform(250e3, 350e3))
    recording = synthetic_set(
        rng, receivers=int(receivers), seconds=20.0, layer_height_m=height, layer_spread_m=spread_m
    )
    row: dict[str, object] = {"seed": seed, "receivers": receivers}
    try:
        sky = solve(recording.files, recording.stations, propagation="skywave")
        row |= {f"sky_{k}": v for k, v in _how_near(sky, recording).items()}
        row["sky_held_68"] = sky.holds(*recording.emitter, 0.6827)
    except TdoaError:
        row["sky_failed"] = True
    try:
        solution = solve(recording.files, recording.stations)
    except TdoaError:
        return {**row, "failed": True}
    return {
        **row,
        **_how_near(solution, recording),
        "noticed": solution.likelihood.chi2 > solution.chi2_bound,
        "cautioned": skywave_caution(solution, recording.stations, 10.0) is not None,
    }


def _how_near(solution: Solution, recording: SyntheticSet) -> dict[str, object]:
    """The estimate's error and whether the 95 % region holds the emitter."""
    at = solution.estimate
    return {
        "error_m": distance_m(at.lat, at.lon, *recording.emitter),
        "held": solution.holds(*recording.emitter, 0.95),
    }


def one_lost_set(job: tuple[int, float]) -> dict[str, object]:
    """Three to five receivers over 30 s, one of them (drawn) with three runs of 1-5 s of its
    blocks lost on the way (the ``lost_blocks`` quirk): located as it is, the error, whether the
    68 % and 95 % regions hold the emitter, and how much of that recording was used and how many
    windows."""
    seed, receivers = job
    recording = synthetic_set(
        np.random.default_rng(seed), receivers=int(receivers), seconds=30.0, quirks=["lost_blocks"]
    )
    victim = [s.id for s in recording.stations].index(recording.quirks["lost_blocks"])
    try:
        solution = solve(recording.files, recording.stations)
    except TdoaError:
        return {"failed": True}
    base = solution.timebases[victim]
    return {
        **_how_near(solution, recording),
        "held_68": solution.holds(*recording.emitter, 0.68),
        "used_s": base.used_samples / base.rate_hz,
        "recorded_s": base.recording_samples / base.rate_hz,
        "windows": solution.pairs[0].windows_used,
    }
