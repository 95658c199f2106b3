"""The sections of the TDoA evaluation (``tools/evaluate_tdoa.py``) with one receiver at fault
(:mod:`inference_worker.science.tdoa_faults`): its GPS time broken, off by microseconds or
lapsed, or its frequency off the others', or its blocks lost on the way; or too close to
another; or every receiver hearing the emitter by skywave. Each runs its sets in
``args.processes`` processes and prints a line a case."""

from __future__ import annotations

import argparse
import functools
import math
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from inference_worker.science.tdoa_faults import (
    BAD_KINDS,
    CLOSE_APART_KM,
    DETUNES_HZ,
    LAPSE_COUNTS,
    LAPSES_S,
    ODD_COUNTS,
    ODD_OFFSETS_S,
    SKYWAVE_COUNTS,
    one_bad_set,
    one_close_set,
    one_detuned_set,
    one_lapsed_set,
    one_lost_set,
    one_odd_set,
    one_skywave_set,
)


def bad_section(args: argparse.Namespace) -> bool:
    """Sets with one receiver's GPS time broken; whether every one was refused naming it, or
    located by the others with it left out."""
    with ProcessPoolExecutor(args.processes) as pool:
        bad = list(pool.map(one_bad_set, range(args.seed, args.seed + args.bad_sets)))
    print(f"\nsets with one receiver's GPS time broken: {len(bad)}")
    for kind in BAD_KINDS:
        mine = [b for b in bad if b["kind"] == kind]
        stages = Counter(str(b["outcome"]) for b in mine)
        named = sum(bool(b["names_receiver"]) for b in mine)
        held = sum(bool(b.get("held")) for b in mine)
        print(
            f"  {kind}: {len(mine)} sets: "
            + ", ".join(f"{stage} {n}" for stage, n in sorted(stages.items()))
            + f"; the message or the result names the receiver in {named}"
            + (
                f"; regions holding the emitter {held} of those left out"
                if "left out" in stages
                else ""
            )
        )
    return all(b["outcome"] and b["names_receiver"] for b in bad)


def odd_section(args: argparse.Namespace) -> None:
    """Sets of four and five with one receiver's time off by microseconds."""
    jobs = [
        (seed, receivers, offset)
        for receivers in (4, 5)
        for offset in ODD_OFFSETS_S
        for seed in range(args.odd_seed, args.odd_seed + args.odd_sets)
    ]
    with ProcessPoolExecutor(args.processes) as pool:
        odd = list(pool.map(one_odd_set, jobs))
    print(f"\nsets with one receiver's GPS time off: {args.odd_sets} for each count and offset")
    for receivers in (4, 5):
        for offset in ODD_OFFSETS_S:
            mine = [o for o in odd if o["receivers"] == receivers and o["offset"] == offset]
            count_of = {key: sum(bool(o.get(key)) for o in mine) for key in ODD_COUNTS}
            print(
                f"  {receivers} receivers, {offset * 1e6:2.0f} µs: fit beyond its bound "
                f"{count_of['beyond']}, a receiver left out {count_of['excluded']} (the one "
                f"off: {count_of['right_one']}), uncertainties widened "
                f"{count_of['widened']}, failed {count_of['failed']}; regions holding the "
                f"emitter {count_of['held']} ({count_of['held_before']} as measured)"
            )


def lapsed_section(args: argparse.Namespace) -> None:
    """Sets of three to five with one receiver's GPS solution lapsed, its fix ages as recorded
    or hidden."""
    cases = [(r, lapse, told) for r in (3, 4, 5) for lapse in LAPSES_S for told in (False, True)]
    seeds = range(args.lapsed_seed, args.lapsed_seed + args.lapsed_sets)
    with ProcessPoolExecutor(args.processes) as pool:
        lapsed = list(pool.map(one_lapsed_set, [(s, *c) for c in cases for s in seeds]))
    print(
        f"\nsets with one receiver's GPS solution lapsed, its time off by what the lapse "
        f"allows: {args.lapsed_sets} for each count and lapse"
    )
    for receivers, lapse, told in cases:
        mine = [
            o for o in lapsed if (o["receivers"], o["lapse"], o["told"]) == (receivers, lapse, told)
        ]
        n = {key: sum(bool(o.get(key)) for o in mine) for key in LAPSE_COUNTS}
        ages = "as recorded" if told else "hidden"
        print(
            f"  {receivers} receivers, {lapse} s, fix ages {ages}: regions holding the "
            f"emitter {n['held']}; fit beyond its bound {n['beyond']}, widened "
            f"{n['widened']}, a receiver left out {n['excluded']}, failed {n['failed']}"
        )


def detuned_section(args: argparse.Namespace) -> None:
    """Sets of four with one receiver's frequency off the others', against the same sets in
    tune (the first offset, 0)."""
    _by_case(
        args,
        one_detuned_set,
        DETUNES_HZ,
        (args.detuned_seed, args.detuned_sets),
        f"sets of four over 20 s with one receiver's frequency off the others': "
        f"{args.detuned_sets} for each offset, the same sets each time",
        lambda offset, mine: (
            f"{offset:4.1f} Hz: {_located(mine)}, its offset found within 0.1 Hz in "
            f"{_count(mine, 'found_within_0_1_hz')}"
        ),
    )


def close_section(args: argparse.Namespace) -> None:
    """Sets of three with two receivers close together, the third 500 km away."""

    def line(apart: float, mine: list[dict[str, object]]) -> str:
        lines = sum(r.get("failed") == "line" for r in mine)
        other = _count(mine, "failed") - lines
        return (
            f"{apart:5.0f} km apart: {_located(mine)}; failed as a line {lines}, otherwise {other}"
        )

    _by_case(
        args,
        one_close_set,
        CLOSE_APART_KM,
        (args.close_seed, args.close_sets),
        f"sets of three over 30 s with two receivers close together, the third 500 km away: "
        f"{args.close_sets} for each distance",
        line,
    )


def skywave_section(args: argparse.Namespace) -> None:
    """Sets of three to five hearing the emitter by one ionospheric hop, located with
    ground-wave paths and with skywave paths; then the same with each path's reflection up to
    25 km higher or lower, as a real layer's height differs between reflection points."""
    for spread_km in (0, 25):
        _by_case(
            args,
            functools.partial(one_skywave_set, spread_m=spread_km * 1e3),
            SKYWAVE_COUNTS,
            (args.skywave_seed, args.skywave_sets),
            "sets over 20 s heard by one hop off a layer 250-350 km high"
            + (
                f", each path's reflection up to {spread_km} km higher or lower"
                if spread_km
                else ""
            )
            + f": {args.skywave_sets} for each receiver count",
            lambda receivers, mine: (
                f"{receivers} receivers, ground-wave paths (the default): {_located(mine)}; fits "
                f"beyond their bound {_count(mine, 'noticed')}, failed {_count(mine, 'failed')}; "
                f"cautioned at 10 MHz {_count(mine, 'cautioned')}\n"
                f"    skywave paths (propagation=skywave): {_located(_sky(mine))}, 68 % regions "
                f"{_count(mine, 'sky_held_68')}; failed {_count(mine, 'sky_failed')}"
            ),
        )


def _sky(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """The rows' skywave-path results under the names the ground-wave ones have."""
    return [{k.removeprefix("sky_"): v for k, v in r.items() if k.startswith("sky_")} for r in rows]


def lost_section(args: argparse.Namespace) -> None:
    """Sets of three to five over 30 s with one receiver's blocks lost on the way."""

    def line(receivers: float, mine: list[dict[str, object]]) -> str:
        used = [r for r in mine if "used_s" in r]
        return (
            f"{receivers:.0f} receivers: {_located(mine)} (68 %: {_count(mine, 'held_68')}); of "
            f"the lossy recording {_median(used, 'used_s'):.1f} s used of "
            f"{_median(used, 'recorded_s'):.1f} s, {_median(used, 'windows'):.0f} windows"
        )

    _by_case(
        args,
        one_lost_set,
        (3, 4, 5),
        (args.lost_seed, args.lost_sets),
        f"sets over 30 s with one receiver's blocks lost on the way (three runs of 1-5 s): "
        f"{args.lost_sets} for each count",
        line,
    )


def _median(rows: list[dict[str, object]], key: str) -> float:
    return float(np.median([float(r[key]) for r in rows])) if rows else math.nan  # type: ignore[arg-type]


def _by_case(
    args: argparse.Namespace,
    one_set: Callable[[tuple[int, float]], dict[str, object]],
    cases: Sequence[float],
    seeds: tuple[int, int],
    heading: str,
    line: Callable[[float, list[dict[str, object]]], str],
) -> None:
    """Runs ``one_set`` for each case on ``seeds`` (the first and how many: the same sets each
    case) in ``args.processes`` processes, and prints ``heading`` and a ``line`` a case (the
    second of each row's job is its case)."""
    first, sets = seeds
    jobs = [(seed, case) for case in cases for seed in range(first, first + sets)]
    with ProcessPoolExecutor(args.processes) as pool:
        rows = list(pool.map(one_set, jobs))
    print(f"\n{heading}")
    for case in cases:
        mine = [row for (_, of), row in zip(jobs, rows, strict=True) if of == case]
        print(f"  {line(case, mine)}")


def _count(rows: list[dict[str, object]], key: str) -> int:
    return sum(bool(r.get(key)) for r in rows)


def _located(rows: list[dict[str, object]]) -> str:
    """How many of the sets were located, their median error and how many regions held the
    emitter."""
    errors = [float(r["error_m"]) for r in rows if "error_m" in r]  # type: ignore[arg-type]
    median = f"{np.median(errors):,.0f} m" if errors else "-"
    return (
        f"located {len(errors)} of {len(rows)}, median error {median}, regions holding the "
        f"emitter {sum(bool(r.get('held')) for r in rows)}"
    )
