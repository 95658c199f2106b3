"""Ellipse maths: scale factors, coverage against the chi-square law, orientation, polygons."""

from __future__ import annotations

import math

import numpy as np
import pytest

from inference_worker.core.ellipse import (
    Estimate,
    EstimateError,
    contains,
    decode_output,
    describe,
    distance_m,
    ellipse,
    ellipse_polygon,
    inside_drawn_ellipse,
    metres_per_degree,
    scale_for_confidence,
)

LAYOUT4 = ("lat_deg", "lon_deg", "sigma_east_m", "sigma_north_m")
LAYOUT5 = (*LAYOUT4, "rho")


@pytest.mark.parametrize(
    ("p", "k"), [(0.3935, 1.000), (0.6827, 1.515), (0.68, 1.510), (0.95, 2.448), (0.99, 3.035)]
)
def test_scale_factor_matches_the_two_dimensional_chi_square(p, k):
    assert scale_for_confidence(p) == pytest.approx(k, abs=1e-3)


@pytest.mark.parametrize("rho", [0.0, 0.6, -0.85])
@pytest.mark.parametrize("confidence", [0.3935, 0.68, 0.95])
def test_ellipse_holds_the_truth_as_often_as_it_claims(rho, confidence):
    """Given a Gaussian estimate, When truths are drawn from it, Then the share inside matches."""
    estimate = Estimate(45.1, 7.6, sigma_east_m=8_000.0, sigma_north_m=3_000.0, rho=rho)
    rng = np.random.default_rng(42)
    offsets = rng.multivariate_normal([0.0, 0.0], estimate.covariance(), size=20_000)
    m_lat, m_lon = metres_per_degree(estimate.lat)
    inside = np.mean(
        [
            contains(estimate, estimate.lat + n / m_lat, estimate.lon + e / m_lon, confidence)
            for e, n in offsets
        ]
    )
    assert inside == pytest.approx(confidence, abs=0.01)


@pytest.mark.parametrize("rho", [0.0, 0.5, -0.7])
def test_ellipse_axes_enclose_the_same_area_as_the_covariance_says(rho):
    estimate = Estimate(45.0, 7.5, 5_000.0, 2_000.0, rho)
    shape = ellipse(estimate, 0.95)
    expected = math.pi * shape.scale**2 * math.sqrt(np.linalg.det(estimate.covariance()))
    assert math.pi * shape.semi_major_m * shape.semi_minor_m == pytest.approx(expected, rel=1e-9)


def test_orientation_is_the_bearing_of_the_major_axis_clockwise_from_north():
    assert ellipse(Estimate(45, 7, 1_000, 5_000), 0.68).orientation_deg == pytest.approx(0.0)
    assert ellipse(Estimate(45, 7, 5_000, 1_000), 0.68).orientation_deg == pytest.approx(90.0)
    # Positive east/north correlation: the long axis points north-east.
    assert ellipse(Estimate(45, 7, 3_000, 3_000, 0.5), 0.68).orientation_deg == pytest.approx(45.0)
    assert ellipse(Estimate(45, 7, 3_000, 3_000, -0.5), 0.68).orientation_deg == pytest.approx(
        135.0
    )


def test_polygon_is_a_closed_counter_clockwise_ring_in_real_degrees():
    estimate = Estimate(60.0, 10.0, 10_000.0, 10_000.0)
    shape = ellipse(estimate, 0.95)
    ring = np.array(ellipse_polygon(estimate, shape))
    assert (ring[0] == ring[-1]).all()
    signed_area = 0.5 * np.sum(ring[:-1, 0] * ring[1:, 1] - ring[1:, 0] * ring[:-1, 1])
    assert signed_area > 0  # counter-clockwise, as RFC 7946 asks of exterior rings
    # At 60° N a degree of longitude is half a degree of latitude: the circle is twice as wide
    # in degrees of longitude as it is tall in degrees of latitude.
    width = np.ptp(ring[:, 0])
    height = np.ptp(ring[:, 1])
    assert width / height == pytest.approx(2.0, rel=0.01)
    radius = distance_m(60.0, 10.0, ring[0, 1], ring[0, 0])
    assert radius == pytest.approx(shape.semi_major_m, rel=0.01)


def test_describe_gives_68_and_95_percent_ellipses_with_geojson():
    result = describe(Estimate(45.0, 7.5, 4_000.0, 2_000.0, 0.2))
    assert set(result["ellipses"]) == {"68", "95"}
    assert result["ellipses"]["95"]["scale_k"] == pytest.approx(2.448, abs=1e-3)
    assert result["ellipses"]["68"]["polygon"]["type"] == "Polygon"
    assert result["sigma_x_m"] == 4_000.0 and result["sigma_y_m"] == 2_000.0


def test_a_level_calibrated_apart_draws_its_ellipse_at_its_own_radius():
    estimate = Estimate(45.0, 7.5, 4_000.0, 2_000.0, 0.2)
    plain = describe(estimate)["ellipses"]
    scaled = describe(estimate, radius_scales={0.95: 1.1})["ellipses"]
    assert scaled["68"] == plain["68"]  # a level without a factor: from the sigmas alone
    assert scaled["95"]["scale_k"] == pytest.approx(1.1 * plain["95"]["scale_k"], rel=1e-6)
    for axis in ("semi_major_m", "semi_minor_m"):
        assert scaled["95"][axis] == pytest.approx(1.1 * plain["95"][axis])
    tall = Estimate(45.0, 7.5, 1_000.0, 4_000.0)
    # 2.2 sigmas north: inside k = 2.448, outside 0.85 x 2.448 = 2.08
    point = (45.0 + 2.2 * 4_000.0 / metres_per_degree(45.0)[0], 7.5)
    assert contains(tall, *point, 0.95)
    assert not contains(tall, *point, 0.95, radius_scale=0.85)
    assert inside_drawn_ellipse(describe(tall), *point, "95")
    assert not inside_drawn_ellipse(describe(tall, radius_scales={0.95: 0.85}), *point, "95")


def test_decode_output_reads_four_and_five_wide_rows():
    four = decode_output([45.0, 7.5, 100.0, 200.0], LAYOUT4)
    five = decode_output([45.0, 7.5, 100.0, 200.0, -0.3], LAYOUT5)
    assert four.rho == 0.0 and five.rho == -0.3


@pytest.mark.parametrize(
    "row",
    [
        [float("nan"), 7.5, 100.0, 200.0, 0.0],
        [45.0, 7.5, -1.0, 200.0, 0.0],
        [45.0, 7.5, 100.0, 200.0, 1.0],
        [95.0, 7.5, 100.0, 200.0, 0.0],
    ],
)
def test_decode_output_refuses_rows_that_are_not_estimates(row):
    with pytest.raises(EstimateError):
        decode_output(row, LAYOUT5)
