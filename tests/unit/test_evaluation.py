"""Evaluation metrics and baselines on synthetic cases whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from inference_worker.science.baselines import (
    GridLocator,
    crb_position_m,
    measured_power_dbm,
    weighted_centroid,
)
from inference_worker.science.calibration import coverage_at, fit_levels, fit_sigma_scale
from inference_worker.science.datasets import DatasetSpec, generate
from inference_worker.science.metrics import (
    calibration_curve,
    covariance_from_sigmas,
    coverage,
    error_summary,
    gaussian_nll_km,
    mahalanobis_squared,
)
from inference_worker.science.simulator import HeldOutCells


def gaussian_case(n: int = 20_000, seed: int = 0):
    rng = np.random.default_rng(seed)
    means = rng.uniform(-1e4, 1e4, (n, 2))
    cov = covariance_from_sigmas(np.full(n, 3_000.0), np.full(n, 1_000.0), np.full(n, 0.5))
    truths = means + np.einsum("nij,nj->ni", np.linalg.cholesky(cov), rng.normal(size=(n, 2)))
    return means, cov, truths


def test_coverage_of_a_true_gaussian_matches_its_levels():
    means, cov, truths = gaussian_case()
    for level, observed in coverage(means, cov, truths).items():
        assert observed == pytest.approx(level, abs=0.01)


def test_overconfident_ellipses_cover_less():
    means, cov, truths = gaussian_case()
    assert coverage(means, cov / 4.0, truths)[0.95] < 0.7


def test_calibration_curve_of_a_true_gaussian_is_the_diagonal():
    means, cov, truths = gaussian_case()
    levels = np.array([0.1, 0.5, 0.9])
    np.testing.assert_allclose(calibration_curve(means, cov, truths, levels), levels, atol=0.015)


def test_error_summary_in_kilometres():
    means = np.zeros((4, 2))
    truths = np.array([[3_000.0, 4_000.0], [0.0, 1_000.0], [0.0, 2_000.0], [0.0, 10_000.0]])
    summary = error_summary(means, truths)
    assert summary.median_km == pytest.approx(3.5)
    assert summary.mean_km == pytest.approx(4.5)


def test_nll_of_a_unit_gaussian_at_its_mean():
    cov = covariance_from_sigmas(np.array([1_000.0]), np.array([1_000.0]), np.array([0.0]))
    nll = gaussian_nll_km(np.zeros((1, 2)), cov, np.zeros((1, 2)))
    assert nll == pytest.approx(math.log(2 * math.pi))


def test_grid_search_finds_the_emitter_from_noise_free_powers(simulator):
    grid = GridLocator(simulator)
    truth = grid.points[[1234, 9876]]
    powers = 35.0 + simulator.path_gain_db(truth[:, 0], truth[:, 1])
    estimates = grid.locate(powers, sigma_db=6.0)
    np.testing.assert_allclose(estimates.ml, truth)
    assert np.all(np.linalg.eigvalsh(estimates.covariance) > 0)


def test_centroid_of_equal_powers_is_the_centre_of_the_sites(simulator):
    centre = weighted_centroid(simulator, np.full((1, 3), -80.0))[0]
    assert centre == pytest.approx([simulator.rx_east.mean(), simulator.rx_north.mean()], abs=1e-6)


def test_cramer_rao_bound_scales_with_the_power_error(simulator):
    points = np.array([[0.0, 0.0], [15_000.0, -5_000.0]])
    assert crb_position_m(simulator, points, 3.0) == pytest.approx(
        crb_position_m(simulator, points, 6.0) / 2
    )


def test_measured_power_reads_the_received_power(simulator):
    rng = np.random.default_rng(4)
    errors = []
    for _ in range(30):
        capture = simulator.simulate(rng, sample_rate_hz=48_000.0, duration_s=1.0)
        errors.append(measured_power_dbm(capture.iq, 48_000.0, simulator) - capture.rx_power_dbm)
    assert abs(np.median(errors)) < 1.0  # fading averages out over a second


def test_datasets_repeat_and_keep_to_their_side_of_the_split():
    spec = DatasetSpec.cell(9, 12, 12_000.0, 0.1, held_out=True)
    first, second = generate(spec, processes=1), generate(spec, processes=1)
    np.testing.assert_array_equal(first.features_db, second.features_db)
    assert first.features_db.shape == (12, 3, 128, 32)
    assert HeldOutCells().is_held_out(first.truth_m[:, 0], first.truth_m[:, 1]).all()


def test_the_fitted_sigma_scale_undoes_a_known_miscalibration():
    """Ellipses twice too wide are brought back by a scale of one half."""
    means, cov, truths = gaussian_case()
    d2 = mahalanobis_squared(means, cov * 4.0, truths)
    assert fit_sigma_scale(d2) == pytest.approx(0.5, abs=0.01)
    assert coverage_at(d2, 0.5) == pytest.approx([0.3935, 0.6827, 0.95], abs=0.01)


def test_a_level_by_level_fit_puts_every_level_on_its_mark():
    """Errors that are not Gaussian (a Student-t radius): one scale cannot hold all three
    levels, a fit level by level does."""
    rng = np.random.default_rng(5)
    offsets = rng.standard_t(4, size=(20_000, 2))
    d2 = 9.0 * np.sum(offsets**2, axis=1)  # sigmas three times too small, tails too heavy
    single = coverage_at(d2, fit_sigma_scale(d2))
    assert max(abs(c - p) for c, p in zip(single, (0.3935, 0.6827, 0.95), strict=True)) > 0.01
    found = fit_levels(d2)
    held = coverage_at(d2, found.scale, radius_scales=found.radius_scales)
    assert held == pytest.approx([0.3935, 0.6827, 0.95], abs=0.002)
    assert found.radius_scales[0.95] > 1.0  # heavy tails: the 95 % ellipse drawn wider


def test_a_level_by_level_fit_of_gaussian_errors_is_one_scale():
    d2 = 4.0 * np.random.default_rng(6).chisquare(2, 20_000)  # sigmas half the truth
    found = fit_levels(d2)
    assert found.scale == pytest.approx(2.0, rel=0.03)
    assert all(f == pytest.approx(1.0, abs=0.03) for f in found.radius_scales.values())


def test_recorded_figures_keep_six_significant_digits():
    from tools.evaluate_model import significant

    a = {
        "rows": {"all": {"nll": 7.370002856798688, "count": 6000}},
        "spread": [0.38866666666, None],
    }
    b = {
        "rows": {"all": {"nll": 7.370002853323297, "count": 6000}},
        "spread": [0.38866666667, None],
    }
    assert significant(a) == significant(b)  # runs that differ in the last bits write the same
    assert significant(a) == {
        "rows": {"all": {"nll": 7.37, "count": 6000}},
        "spread": [0.388667, None],
    }
    assert significant({"tiny": 1.234567e-9, "flag": True}) == {"tiny": 1.23457e-9, "flag": True}


def test_the_report_says_the_cautions_threshold_and_share(simulator):
    from dataclasses import replace

    from inference_worker.science.world import World, domain_of
    from tools.evaluation_report import caution_lines

    domain = replace(
        domain_of(simulator, World()), outside_evidence=1.126, outside_caution_share=0.4
    )
    _, text = caution_lines(domain)
    assert "threshold is 1.126 and its share 0.4" in text and "--caution-share" in text
    assert caution_lines(domain_of(simulator)) == []  # no prior outside the region: no caution
    assert caution_lines(None) == []


def test_other_lines_on_the_caution_trade_inside_against_far_outside():
    """A client may draw its own line on a result's outside_evidence: the evaluation shows what
    each line cautions of the emitters inside and of those far outside."""
    from tools.evaluation_report import trade_lines
    from tools.robustness_table import outside_trade

    rng = np.random.default_rng(11)
    inside = np.append(rng.lognormal(0.0, 0.3, 4_000), [np.nan] * 40)  # a few never heard
    far = np.append(rng.lognormal(0.4, 0.3, 1_000), [np.nan] * 10)
    evidence = {
        "nominal": (inside, np.zeros(inside.size)),
        "outside": (np.append(far, [9.9] * 50), np.append(np.full(far.size, 30e3), [10e3] * 50)),
    }
    trade = outside_trade(evidence, threshold=1.35)
    assert trade is not None
    lines, own = trade
    shares = [inside_share for _, inside_share, _ in lines]
    assert shares == pytest.approx([0.1, 0.2, 0.25, 1 / 3, 0.4, 0.5], abs=0.01)
    thresholds = [threshold for threshold, _, _ in lines]
    assert thresholds == sorted(thresholds, reverse=True)  # a larger share, a lower line
    far_shares = [far_share for _, _, far_share in lines]
    assert far_shares == sorted(far_shares) and far_shares[0] > shares[0]
    # counted over every emitter 20 km out and more (unheard never cautioned; nearer ones not)
    assert own == (1.35, np.mean(inside > 1.35), np.sum(far > 1.35) / far.size)
    table = trade_lines(trade, far_count=far.size)
    assert f"outside condition's {far.size} emitters" in " ".join(table)
    assert sum("(the model's)" in row for row in table) == 1
    assert len([row for row in table if row.startswith("| ")]) == 1 + 1 + 6 + 1
    assert outside_trade({"nominal": evidence["nominal"]}, 1.35) is None
    assert trade_lines(None, None) == []
