"""The capture simulator: reproducible, physical, the right shapes."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from inference_worker.core.domain import clipped_share
from inference_worker.science.network import load_network
from inference_worker.science.simulator import (
    SIGNAL_HALF_WIDTH_HZ,
    CaptureSimulator,
    SimulatorConfig,
)
from inference_worker.science.world import World


def test_seeded_runs_repeat(simulator):
    a = simulator.simulate(np.random.default_rng(3), sample_rate_hz=12_000.0, duration_s=0.25)
    b = simulator.simulate(np.random.default_rng(3), sample_rate_hz=12_000.0, duration_s=0.25)
    np.testing.assert_array_equal(a.iq, b.iq)
    assert (a.lat, a.lon) == (b.lat, b.lon)


@pytest.mark.parametrize(("rate", "duration"), [(12_000.0, 0.1), (192_000.0, 1.0)])
def test_capture_shape_and_dtype(simulator, rate, duration):
    capture = simulator.simulate(np.random.default_rng(0), sample_rate_hz=rate, duration_s=duration)
    assert capture.iq.shape == (3, int(rate * duration))
    assert capture.iq.dtype == np.complex64
    assert capture.receivers == ("torino", "montanaro", "giaveno")


def test_mean_received_power_falls_with_distance(simulator: CaptureSimulator):
    site = simulator.receivers[0]
    near = simulator.mean_rx_power_dbm(site.lat + 0.01, site.lon, 40.0)[0]
    far = simulator.mean_rx_power_dbm(site.lat + 0.2, site.lon, 40.0)[0]
    assert near > far + 20.0


def test_emitters_are_drawn_inside_the_region(simulator):
    rng = np.random.default_rng(1)
    south, north, west, east = simulator.region()
    for _ in range(100):
        lat, lon = simulator.draw_position(rng)
        assert south <= lat <= north and west <= lon <= east


def test_shadowing_is_spatially_correlated_with_the_configured_spread(simulator):
    rng = np.random.default_rng(2)
    east, north = rng.uniform(-30_000, 30_000, (2, 5_000))
    here = simulator.shadowing_db(east, north)
    near = simulator.shadowing_db(east + 50.0, north)
    far = simulator.shadowing_db(east + 5_000.0, north)
    assert here.std() == pytest.approx(simulator.config.shadowing_sigma_db, rel=0.1)
    assert np.corrcoef(here[:, 0], near[:, 0])[0, 1] > 0.8
    assert abs(np.corrcoef(here[:, 0], far[:, 0])[0, 1]) < 0.15


def test_the_same_environment_seed_is_the_same_terrain():
    a, b = CaptureSimulator(), CaptureSimulator()
    assert a.shadowing_db(1_000.0, 2_000.0) == pytest.approx(b.shadowing_db(1_000.0, 2_000.0))


def test_local_frame_round_trips(simulator):
    lat, lon = simulator.to_geo(12_345.0, -6_789.0)
    east, north = simulator.to_local(lat, lon)
    assert (float(east), float(north)) == pytest.approx((12_345.0, -6_789.0), abs=1e-6)


def write_network(tmp_path, receivers, region=None):
    path = tmp_path / "network.json"
    path.write_text(json.dumps({"name": "mine", "receivers": receivers, "region": region}))
    return path


MILANO = [
    {"id": "milano", "lat": 45.464, "lon": 9.19, "antenna_height_m": 25.0, "gain_offset_db": 0.0},
    {"id": "genova", "lat": 44.405, "lon": 8.946, "antenna_height_m": 15.0},
    {"id": "giovi", "lat": 44.56, "lon": 8.94},
]


def test_a_network_file_gives_another_network_and_its_region(tmp_path):
    region = {"south": 44.2, "north": 45.7, "west": 8.5, "east": 9.6}
    network = load_network(write_network(tmp_path, MILANO, region))
    assert [r.id for r in network.receivers] == ["milano", "genova", "giovi"]
    assert network.receivers[2].antenna_height_m == 10.0  # the default height
    simulator = CaptureSimulator.of(network)
    assert simulator.region() == pytest.approx((44.2, 45.7, 8.5, 9.6))
    rng = np.random.default_rng(4)
    for _ in range(50):
        lat, lon = simulator.draw_position(rng)
        assert 44.2 <= lat <= 45.7 and 8.5 <= lon <= 9.6


def test_without_a_region_the_receivers_box_grown_by_the_margin_is_used(tmp_path):
    simulator = CaptureSimulator.of(load_network(write_network(tmp_path, MILANO)))
    south, north, west, east = simulator.region()
    assert south < 44.405 - 0.08 and north > 45.464 + 0.08  # 10 km is ~0.09° of latitude


@pytest.mark.parametrize(
    ("receivers", "region", "message"),
    [
        (MILANO[:2], None, "exactly 3 receivers"),
        ([*MILANO[:2], {"id": "x", "lat": 44.0}], None, "id, lat and lon"),
        ([*MILANO[:2], {**MILANO[0], "lat": 123.0, "id": "z"}], None, "impossible position"),
        ([*MILANO[:2], MILANO[0]], None, "ids must differ"),
        (MILANO, {"south": 44.5, "north": 45.7, "west": 8.5, "east": 9.6}, "hold the receivers"),
        (MILANO, {"south": 45.7, "north": 44.2, "west": 8.5, "east": 9.6}, "south < north"),
        (MILANO, {"south": 44.2}, "region needs"),
        # Overflowing integers and numbers that are no numbers were a traceback or taken in.
        ([*MILANO[:2], {**MILANO[2], "lat": 10**400}], None, "id, lat and lon"),
        ([*MILANO[:2], {**MILANO[2], "antenna_height_m": math.inf}], None, "height or gain"),
        ([*MILANO[:2], {**MILANO[2], "gain_offset_db": math.nan}], None, "height or gain"),
        (MILANO, {"south": 44.2, "north": math.inf, "west": 8.5, "east": 9.6}, "within ±90"),
        (MILANO, {"south": 44.2, "north": 45.7, "west": 8.5, "east": 10**400}, "region needs"),
    ],
)
def test_a_wrong_network_file_is_refused_with_what_is_wrong(tmp_path, receivers, region, message):
    with pytest.raises(ValueError, match=message):
        load_network(write_network(tmp_path, receivers, region))


def test_a_network_file_saved_with_a_byte_order_mark_reads_and_binary_says_which_file(tmp_path):
    path = write_network(tmp_path, MILANO)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # as some editors save UTF-8
    assert [r.id for r in load_network(path).receivers] == ["milano", "genova", "giovi"]
    path.write_bytes(b"\x00\xff\x00{")
    with pytest.raises(ValueError, match=f"{path.name}: cannot read the network file"):
        load_network(path)


def test_the_anti_alias_filter_removes_what_lies_beyond_the_band():
    """A carrier 13-25 kHz off at 12 kHz would fold into the capture without the receiver's
    filter (25 kHz onto +1 kHz); with it the receiver hears its noise only."""
    config = replace(SimulatorConfig(), max_frequency_offset_hz=0.0, oscillator_ppm=25_000 / 145.5)
    simulator = CaptureSimulator(config=config)
    rng = np.random.default_rng(5)
    for _ in range(20):
        capture = simulator.simulate(rng, sample_rate_hz=12_000.0, duration_s=0.5)
        offsets = [capture.extras[f"offset_hz_{i}"] for i in range(3)]
        beyond = [i for i, o in enumerate(offsets) if abs(o) > 8_000.0 + SIGNAL_HALF_WIDTH_HZ]
        if beyond:
            break
    else:
        pytest.fail("no receiver drew an offset beyond the band")
    row = beyond[0]
    noise = 10 ** ((config.noise_dbm_per_hz - config.full_scale_dbm) / 10) * 12_000.0
    signal = 10 ** ((capture.rx_power_dbm[row] - config.full_scale_dbm) / 10)
    leaked = np.mean(np.abs(capture.iq[row]) ** 2) - noise
    assert leaked < max(1e-3 * signal, 0.1 * noise)  # 30 dB down (CW key clicks are wide)


def test_the_adc_clips_at_full_scale():
    config = replace(SimulatorConfig(), full_scale_dbm=-90.0)
    capture = CaptureSimulator(config=config).simulate(
        np.random.default_rng(6), sample_rate_hz=12_000.0, duration_s=0.2
    )
    assert np.abs(capture.iq.real).max() <= 1.0 and np.abs(capture.iq.imag).max() <= 1.0
    assert clipped_share(capture.iq).max() > 0.01


def test_emitters_outside_the_region_thin_out_with_distance():
    config = replace(SimulatorConfig(), outside_fraction=1.0, outside_scale_m=10_000.0)
    simulator = CaptureSimulator(config=config)
    rng = np.random.default_rng(7)
    points = np.array([simulator.draw_local(rng) for _ in range(2_000)])
    distance = simulator.outside_distance_m(points[:, 0], points[:, 1])
    assert distance.min() > 0 and distance.max() <= config.outside_max_m
    near, far = np.mean(distance < 10_000.0), np.mean((distance >= 20_000) & (distance < 30_000))
    assert near > 2 * far > 0


def test_a_world_changes_each_capture_around_the_nominal_one():
    world, nominal = World(), SimulatorConfig()
    rng = np.random.default_rng(8)
    drawn = [world.draw(rng, nominal) for _ in range(2_000)]
    assert np.mean([c == nominal for c in drawn]) == pytest.approx(
        0.75 * 0.65 * 0.75 * 0.75 * 0.92 * 0.92, abs=0.04
    )
    exponents = [c.path_loss_exponent for c in drawn if c.path_loss_exponent != 3.0]
    assert min(exponents) >= 2.6 and max(exponents) <= 3.8
