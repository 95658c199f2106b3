"""How much delays that fit no one position widen their uncertainties: a receiver's time off
shows in the few degrees of freedom the receivers' times have, pairs that do not add up round a
triangle in the pairs' own; and whole sets with one receiver's time off: refused, that receiver
left out, or the regions widened."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest

from inference_worker.core.contract import Receiver
from inference_worker.core.ellipse import contains, tdoa_feature_collection
from inference_worker.core.geodesy import (
    EARTH_RADIUS_M,
    SPEED_OF_LIGHT_M_S,
    geodesic_m,
    great_circle_m,
    haversine,
    haversine_path_m,
    path_m,
)
from inference_worker.core.kiwi_wav import read_kiwi_wav
from inference_worker.core.tdoa import Solution, _widened_to_fit, solve
from inference_worker.core.tdoa_locate import locate
from inference_worker.core.tdoa_results import describe_solution, skywave_caution
from inference_worker.core.tdoa_search import freedom, misfit_factor
from inference_worker.core.time_differences import Delays, PairDelay, TdoaError, pair_design
from inference_worker.science.kiwi_sets import rewritten, synthetic_set
from inference_worker.science.tdoa_faults import one_close_set, one_lapsed_set, one_skywave_set

FIVE = (
    Receiver("A", 47.4, 8.5),
    Receiver("B", 45.2, 5.7),
    Receiver("C", 45.4, 11.0),
    Receiver("D", 48.8, 2.3),
    Receiver("E", 43.3, 5.4),
)
EMITTER = (46.1, 8.2)
PAIRS = list(itertools.combinations(range(len(FIVE)), 2))
# 1 µs a receiver's time, and 0.1 µs of each pair's own (its correlation): full rank.
DESIGN = pair_design(PAIRS, len(FIVE))
COVARIANCE = DESIGN @ DESIGN.T + 0.01 * np.eye(len(PAIRS))


def delays(times_us: list[float], pair_errors_us: dict[int, float] | None = None) -> Delays:
    """Every pair's delay from ``EMITTER`` with receivers' times and pairs' delays off."""
    arrival = [geodesic_m(s.lat, s.lon, *EMITTER) / SPEED_OF_LIGHT_M_S for s in FIVE]
    errors = pair_errors_us or {}
    pairs = [
        PairDelay(
            a,
            b,
            arrival[a] - arrival[b] + (times_us[a] - times_us[b] + errors.get(row, 0)) * 1e-6,
            1e-6,
            10,
            10,
        )
        for row, (a, b) in enumerate(PAIRS)
    ]
    return Delays(pairs, COVARIANCE)


def factor(measured: Delays) -> float:
    return misfit_factor(FIVE, measured, measured.precision(), *EMITTER)


def chi2(measured: Delays) -> float:
    arrival = [geodesic_m(s.lat, s.lon, *EMITTER) / SPEED_OF_LIGHT_M_S for s in FIVE]
    residual = np.array([(arrival[p.a] - arrival[p.b] - p.delay_s) * 1e6 for p in measured])
    return float(residual @ measured.precision() @ residual)


def test_delays_that_fit_are_not_widened():
    assert factor(delays([0.0] * 5)) == 1.0


def test_one_receivers_time_off_is_counted_against_the_receivers_redundancy():
    off = delays([0.0, 10.0, 0.0, 0.0, 0.0])
    assert freedom(off.precision()) == 8  # ten pairs less the position's two
    assert factor(off) == pytest.approx(chi2(off) / 2, rel=1e-6)  # five receivers less three


def test_pairs_that_do_not_add_up_are_counted_against_the_fits_freedom():
    off = delays([0.0] * 5, {row: 0.5 * (-1) ** row for row in range(len(PAIRS))})
    assert factor(off) == pytest.approx(chi2(off) / 8, rel=1e-6)
    assert factor(off) > 5


def test_delays_too_far_apart_to_fit_once_widened_fail_saying_so():
    # A receiver's time 1 ms off (300 km of light travel): widened to fit, the region spans
    # tens of thousands of km, no position.
    off = delays([0.0, 0.0, 0.0, 1000.0, 0.0])
    estimate, likelihood = locate(FIVE, off)
    assert likelihood.chi2 > likelihood.chi2_bound
    with pytest.raises(TdoaError, match=r"agree with no one position .* GPS time and position"):
        _widened_to_fit(Solution(estimate, likelihood, off, [], 0.0), FIVE)


def test_a_lapsed_receivers_fix_ages_keep_its_region_honest():
    # Three receivers, one 100 s without a GPS solution and 10 µs off: any three delays fit some
    # position, so only the fix ages can tell that its time is loose.
    hidden = one_lapsed_set((7200, 3, 100, False))
    told = one_lapsed_set((7200, 3, 100, True))
    assert not hidden["beyond"] and not hidden["held"]
    assert told["held"] and not told.get("failed")


def shifted_by(recording, receiver: int, seconds: float) -> list[bytes]:
    """The set's files with one receiver's GPS stamps ``seconds`` off."""
    wrong = read_kiwi_wav(recording.files[receiver])
    return recording.files_with(receiver, rewritten(wrong, shift_s=seconds))


def test_a_receiver_whose_delays_disagree_is_left_out_when_the_others_agree_without_it():
    # RX2's time 10 µs off: five receivers located with it fit no position (chi2 ~250 against a
    # bound of 26) and the ellipse missed the emitter; only without it do the other four agree.
    recording = synthetic_set(np.random.default_rng(902), receivers=5, seconds=10.0)
    solution = solve(shifted_by(recording, 1, 10e-6), recording.stations)
    assert solution.excluded is not None and solution.excluded.index == 1
    assert solution.excluded.chi2_with > solution.excluded.bound_with
    assert solution.likelihood.chi2 <= solution.chi2_bound
    assert solution.holds(*recording.emitter, 0.95)
    described = describe_solution(solution, recording.stations)
    (left_out,) = described["excluded"]
    assert left_out["id"] == "RX2" and "disagree with the others'" in left_out["reason"]
    assert described["fit_chi2"] <= described["fit_chi2_bound"]
    receivers = [
        f["properties"]
        for f in tdoa_feature_collection(described)["features"]
        if f["properties"]["kind"] == "receiver"
    ]
    assert [r["id"] for r in receivers if r.get("excluded")] == ["RX2"]


def test_with_four_receivers_a_disagreeing_one_widens_the_regions_rather_than_being_guessed():
    # Any three receivers fit some position, so which of four is wrong cannot be told apart:
    # the delays' uncertainties are widened until they fit (chi2 248, nearly all of it the
    # receivers' times, which have one degree of freedom beyond the position: ×15.8), and the
    # region that missed the emitter 1.6 km off now holds it.
    recording = synthetic_set(np.random.default_rng(902), receivers=4, seconds=10.0)
    solution = solve(shifted_by(recording, 1, 10e-6), recording.stations)
    assert solution.excluded is None
    described = describe_solution(solution, recording.stations)
    assert described["fit_chi2"] > described["fit_chi2_bound"] and described["excluded"] == []
    assert described["sigma_scale"] == pytest.approx(math.sqrt(described["fit_chi2"]), rel=0.02)
    (estimate,) = [
        f["properties"]
        for f in tdoa_feature_collection(described)["features"]
        if f["properties"]["kind"] == "estimate" and not f["properties"].get("alternative")
    ]
    assert estimate["sigma_scale"] == described["sigma_scale"]
    as_measured, _ = locate(recording.stations, solution.pairs)
    assert not contains(as_measured, *recording.emitter, 0.95)
    assert solution.holds(*recording.emitter, 0.95)
    assert solution.estimate.sigma_east_m > 5 * as_measured.sigma_east_m


def test_delays_that_agree_are_not_widened():
    recording = synthetic_set(np.random.default_rng(902), receivers=4, seconds=10.0)
    solution = solve(recording.files, recording.stations)
    assert solution.likelihood.widened == 1.0
    assert describe_solution(solution, recording.stations)["sigma_scale"] == 1.0


def test_the_tdoa_benchmark_times_a_set_with_one_receiver_off_too(capsys):
    """The worst case (every receiver left out in turn) is what bounds the receivers a set may
    have: the benchmark prints it beside the set as recorded, and how many of each failed."""
    from tools.bench_tdoa import main as bench

    argv = ["--sets", "1", "--receivers", "5", "--rates", "12000", "--seconds", "6"]
    assert bench([*argv, "--retain-mb", "0"]) == 0  # this process's allocator left as it is
    kept, header, row = capsys.readouterr().out.strip().splitlines()
    assert kept == "freed memory kept: no (the C library defaults)"
    assert header.split()[-4:] == ["one", "off", "s", "failed"]
    assert row.split()[:3] == ["12000", "5", "10"] and float(row.split()[-4]) > 0
    assert row.split()[-3:] == ["0", "/", "0"]


def test_the_tdoa_benchmark_counts_a_set_that_fixes_a_line(capsys):
    # Three receivers' skywave delays can fix a line (the first set of seed 3000 does): the
    # benchmark times it and says so instead of stopping with a traceback.
    from tools.bench_tdoa import main as bench

    argv = ["--sets", "1", "--receivers", "3", "--seconds", "6", "--rates", "12000"]
    assert bench([*argv, "--no-one-off", "--propagation", "skywave", "--retain-mb", "0"]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1]
    assert row.split()[:3] == ["12000", "3", "3"] and row.split()[-2:] == ["-", "1"]


def test_the_close_sets_count_a_line_as_a_line_and_locate_the_rest():
    # The evaluation tells failures apart by the worker's message: a changed message must not
    # move lines into "otherwise" unnoticed.
    assert one_close_set((7401, 1.0))["failed"] == "line"
    located = one_close_set((7400, 1.0))
    assert located["held"] and float(located["error_m"]) > 10e3  # type: ignore[arg-type]


def test_one_hop_is_twice_the_slant_to_the_layer_above_the_midpoint():
    assert path_m(0.0, 300e3) == pytest.approx(600e3)
    # 500 km apart under a layer 300 km high: about a flat Earth's 2 * hypot(250, 300) km
    assert path_m(500e3, 300e3) == pytest.approx(2 * math.hypot(250e3, 300e3), rel=0.02)
    grounds = np.array([0.0, 500e3, 2_000e3])
    assert np.allclose(path_m(grounds, 300e3), [float(path_m(float(g), 300e3)) for g in grounds])
    assert path_m(grounds, 0.0) is grounds  # ground wave: the ground distance itself


@pytest.mark.parametrize("height", [0.0, 100e3, 300e3])
def test_paths_from_haversines_are_the_paths_of_the_angles(height):
    # A grid's paths come from each point's haversine without its angle: the same lengths as
    # the angle's, from a metre apart to the far side of the Earth.
    rng = np.random.default_rng(7)
    lat1, lon1 = 45.5, 9.2
    lats = np.r_[lat1 + np.array([1e-5, 1e-3, 0.1]), rng.uniform(-89, 89, 200)]
    lons = np.r_[lon1 + np.array([0.0, 1e-3, 0.2]), rng.uniform(-180, 180, 200)]

    def unit(lat, lon):
        phi, lam = np.radians(lat), np.radians(lon)
        return np.stack([np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)])

    u, v = unit(lat1, lon1)[:, None], unit(lats, lons)
    angle = np.arctan2(np.linalg.norm(np.cross(u, v, axis=0), axis=0), (u * v).sum(axis=0))
    radius, top = EARTH_RADIUS_M, EARTH_RADIUS_M + height
    expected = (
        radius * angle
        if height == 0
        else 2 * np.sqrt(radius**2 + top**2 - 2 * radius * top * np.cos(angle / 2))
    )
    paths = haversine_path_m(haversine(lat1, lon1, lats, lons), height)
    assert np.allclose(paths, expected, rtol=1e-9, atol=1e-3)
    into = np.full(paths.shape, np.nan)  # written in place, as a search's grids are
    assert haversine_path_m(haversine(lat1, lon1, lats, lons), height, out=into) is into
    assert np.array_equal(into, paths)
    with pytest.raises(ValueError, match="own haversines"):
        haversine_path_m(into, height, out=into)
    one = haversine_path_m(haversine(lat1, lon1, float(lats[5]), float(lons[5])), height)
    assert np.ndim(one) == 0 and one == paths[5]  # a point's path is a number, as before
    ground = great_circle_m(lat1, lon1, lats, lons)
    assert np.allclose(path_m(ground, height), expected, rtol=1e-9, atol=1e-3)


def test_receivers_beyond_a_ground_waves_reach_at_hf_are_cautioned_about_skywave():
    # Heard by one hop, three receivers' delays fit a place 100 km or more off as exactly as
    # the ground-wave paths they assume: nothing in the fit tells; only the frequency and the
    # distances can, and the result says so.
    row = one_skywave_set((7500, 3))
    assert float(row["error_m"]) > 20e3 and not row["held"] and not row["noticed"]  # type: ignore[arg-type]
    assert row["cautioned"]
    recording = synthetic_set(np.random.default_rng(11), receivers=4, seconds=6.0, quirks=False)
    solution = solve(recording.files, recording.stations)
    assert describe_solution(solution, recording.stations, 0.0775)["cautions"] == []  # LF
    far = describe_solution(solution, recording.stations, 10.0)["cautions"]
    assert [c["code"] for c in far] == ["skywave"] and len(far[0]["receivers"]) == 4
    described = describe_solution(solution, recording.stations, 10.0)
    estimate = next(
        f["properties"]
        for f in tdoa_feature_collection(described)["features"]
        if f["properties"]["kind"] == "estimate"
    )
    assert estimate["cautions"] == far  # the GeoJSON says so too
    first = recording.stations[0]
    at_first = dataclasses.replace(
        solution, estimate=dataclasses.replace(solution.estimate, lat=first.lat, lon=first.lon)
    )
    caution = skywave_caution(at_first, recording.stations, 10.0)
    assert caution is not None and first.id not in caution["receivers"]
    unheard_last = dataclasses.replace(solution, unheard=(3,))  # left out: not named
    caution = skywave_caution(unheard_last, recording.stations, 10.0)
    assert caution is not None and caution["receivers"] == ["RX1", "RX2", "RX3"]


def test_a_recording_partly_off_its_time_base_is_cautioned_about_with_what_was_used():
    # One receiver's stamps jump at 80-90 % of its recording: the stretch after the jump is
    # not used, and the result says how much of each such recording was.
    jumped = synthetic_set(
        np.random.default_rng(5), receivers=3, seconds=20.0, quirks=["stamp_jump"]
    )
    result = describe_solution(solve(jumped.files, jumped.stations), jumped.stations)
    (caution,) = result["cautions"]
    assert caution["code"] == "partly_unused"
    assert caution["receivers"] == [jumped.quirks["stamp_jump"]]
    assert f"{jumped.quirks['stamp_jump']} 17.7 s of 20.0 s" in caution["detail"]
    # A first block without time, a lost fix and a file cut short leave nothing unused.
    quirky = ["zero_first_stamp", "cut_short", "lost_fix"]
    other = synthetic_set(np.random.default_rng(5), receivers=3, seconds=20.0, quirks=quirky)
    assert describe_solution(solve(other.files, other.stations), other.stations)["cautions"] == []
