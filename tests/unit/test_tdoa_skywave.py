"""Skywave: a set heard by one hop off an ionospheric layer is located with such paths over the
layer heights tried, its region wide enough to hold the emitter where ground-wave paths put it
far off with a small one; a set heard along the ground is located as before unless asked."""

from __future__ import annotations

import math

import numpy as np
import pytest

from inference_worker.core.ellipse import Estimate, contains, distance_m
from inference_worker.core.tdoa import solve
from inference_worker.core.tdoa_locate import locate
from inference_worker.core.tdoa_results import describe_solution
from inference_worker.core.tdoa_skywave import LAYER_HEIGHTS_M, mixture
from inference_worker.science.kiwi_sets import synthetic_set
from tests.helpers import heard_by_skywave


def test_a_set_heard_by_skywave_is_located_with_skywave_paths():
    recording = heard_by_skywave(spread_m=10e3)
    lat, lon = recording.emitter
    ground = solve(recording.files, recording.stations)
    sky = solve(recording.files, recording.stations, propagation="skywave")
    ground_error = distance_m(ground.estimate.lat, ground.estimate.lon, *recording.emitter)
    sky_error = distance_m(sky.estimate.lat, sky.estimate.lon, *recording.emitter)
    assert ground_error > 50e3 and not ground.holds(lat, lon, 0.95)
    assert sky_error < ground_error / 3 and sky.holds(lat, lon, 0.95)
    described = describe_solution(sky, recording.stations, 10.0)
    assert described["propagation"] == "skywave" and described["cautions"] == []
    low, high = LAYER_HEIGHTS_M[0] / 1e3, LAYER_HEIGHTS_M[-1] / 1e3
    assert low <= described["layer_height_km"] <= high and described["layer_height_sd_km"] > 0
    told = describe_solution(ground, recording.stations, 10.0)
    assert told["propagation"] == "ground" and told["layer_height_km"] is None
    assert "propagation=skywave" in told["cautions"][0]["detail"]


def test_a_line_beyond_the_area_searched_neither_weighs_a_layer_height_nor_the_place():
    # Three receivers whose delays leave, besides the emitter's place, a line reaching far
    # beyond the area searched, counted as a peak of its own below ~243.7 km and not above:
    # weighed by its mass, the likelihood of the heights fell 5 nepers there, and a height
    # refined to that edge came out 244 ± 0.3 km against the simulated 264.
    rng = np.random.default_rng(7501)
    height_m = float(rng.uniform(250e3, 350e3))
    recording = synthetic_set(rng, receivers=3, seconds=20.0, layer_height_m=height_m)
    sky = solve(recording.files, recording.stations, propagation="skywave")
    below, above = (
        locate(recording.stations, sky.pairs, layer_height_m=h)[1].log_evidence
        for h in (243.70e3, 243.77e3)
    )
    assert abs(above - below) < 0.01
    # Nor, weighed by its mass thousands of km beyond, is it a place 99 % likely in Canada.
    assert sky.likelihood.weight > 0.5
    for place, _ in sky.likelihood.alternatives:
        assert distance_m(place.lat, place.lon, *recording.emitter) < 2_000e3
    assert sky.likelihood.layer_height_sd_m > 10e3
    assert abs(sky.likelihood.layer_height_m - height_m) < 3 * sky.likelihood.layer_height_sd_m


def test_ground_wave_sets_are_located_as_before_unless_skywave_is_asked():
    recording = synthetic_set(np.random.default_rng(11), receivers=4, seconds=6.0, quirks=False)
    plain = solve(recording.files, recording.stations)
    assert (
        solve(recording.files, recording.stations, propagation="ground").estimate == plain.estimate
    )
    assert plain.likelihood.layer_height_m == 0.0


def test_a_mixture_spans_its_parts_and_keeps_their_weights():
    left = Estimate(45.0, 8.0, 1_000.0, 1_000.0)
    right = Estimate(45.0, 8.0 + 20_000.0 / (111_195.0 * math.cos(math.radians(45.0))), 1e3, 1e3)
    mixed = mixture([(1.0, left), (1.0, right)])
    assert distance_m(mixed.lat, mixed.lon, left.lat, left.lon) == pytest.approx(10_000, rel=0.01)
    assert mixed.sigma_east_m == pytest.approx(math.hypot(1_000, 10_000), rel=0.01)
    assert mixed.sigma_north_m == pytest.approx(1_000, rel=0.01)
    assert contains(mixed, right.lat, right.lon, 0.95) and contains(mixed, left.lat, left.lon, 0.95)
    leaning = mixture([(3.0, left), (1.0, right)])
    assert distance_m(leaning.lat, leaning.lon, left.lat, left.lon) == pytest.approx(
        5_000, rel=0.01
    )
