"""The capture simulator: reproducible, physical, the right shapes."""

from __future__ import annotations

import numpy as np
import pytest

from inference_worker.science.simulator import CaptureSimulator


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
