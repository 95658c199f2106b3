"""The model's domain and each capture's quality block: what the worker can tell without truth."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from inference_worker.core.domain import (
    OUTSIDE_EVIDENCE,
    Domain,
    assess,
    capture_outside_evidence,
    clipped_share,
)
from inference_worker.core.features import FeatureParams, analyse
from inference_worker.science.calibration import OUTSIDE_CAUTION_SHARE, fit_outside_evidence
from inference_worker.science.simulator import CaptureSimulator, SimulatorConfig
from inference_worker.science.world import World, domain_of

PARAMS = replace(FeatureParams(), mean_db=-140.0, std_db=20.0)


@pytest.fixture(scope="module")
def domain(simulator) -> Domain:
    return domain_of(simulator, World())


def quality(capture, domain, params=PARAMS):
    features, band = analyse(capture.iq, capture.sample_rate_hz, params)
    return assess(features, band, clipped_share(capture.iq), params, capture.receivers, domain)


def codes(block) -> set[str]:
    """Every code of the block: reasons and cautions."""
    return {entry["code"] for entry in block["reasons"] + block["cautions"]}


def test_the_domain_round_trips_through_model_metadata(domain):
    assert Domain.from_metadata(domain.to_metadata()) == domain
    assert domain.tx_power_dbm == (10.0, 60.0)
    assert domain.path_loss_exponent == (2.6, 3.8)


def test_a_nominal_capture_inside_the_region_is_in_domain(simulator, domain):
    rng = np.random.default_rng(1)
    blocks = [
        quality(simulator.simulate(rng, sample_rate_hz=48_000.0, duration_s=0.5), domain)
        for _ in range(40)
    ]
    assert all(b["in_domain"] for b in blocks)
    assert not any(b["reasons"] for b in blocks)
    # the weak outside-region evidence cautions about a quarter of these, without deciding
    assert all({c["code"] for c in b["cautions"]} <= {"outside_region"} for b in blocks)
    assert all(len(b["signal_power_dbm"]) == 3 for b in blocks)


def test_an_overloaded_receiver_is_flagged_as_clipping(simulator, domain):
    overloaded = CaptureSimulator(config=replace(simulator.config, full_scale_dbm=-95.0))
    capture = overloaded.simulate(np.random.default_rng(2), sample_rate_hz=12_000.0, duration_s=0.5)
    block = quality(capture, domain)
    assert "clipping" in codes(block) and block["in_domain"] is False
    clipping = next(r for r in block["reasons"] if r["code"] == "clipping")
    assert set(clipping["receivers"]) <= set(capture.receivers) and clipping["receivers"]


def test_a_signal_beyond_the_band_at_12_khz_is_flagged_off_band(simulator, domain):
    config = replace(simulator.config, max_frequency_offset_hz=4_800.0)
    capture = CaptureSimulator(config=config).simulate(
        np.random.default_rng(3),
        sample_rate_hz=12_000.0,
        duration_s=0.5,
        local=(0.0, 0.0),
    )
    offsets = np.array([capture.extras[f"offset_hz_{i}"] for i in range(3)])
    block = quality(capture, domain)
    if (np.abs(offsets) > 3_600.0).any():
        assert "off_band" in codes(block)


def test_the_same_offsets_at_48_khz_are_followed_and_in_band(simulator, domain):
    config = replace(simulator.config, oscillator_ppm=50.0)
    rng = np.random.default_rng(4)
    blocks = [
        quality(
            CaptureSimulator(config=config).simulate(
                rng, sample_rate_hz=48_000.0, duration_s=0.5, local=(0.0, 0.0)
            ),
            domain,
        )
        for _ in range(10)
    ]
    assert not any("off_band" in codes(b) for b in blocks)


def test_emitters_far_outside_the_region_are_flagged_more_than_those_inside(simulator, domain):
    config = replace(
        simulator.config, outside_fraction=1.0, outside_scale_m=1e12, outside_max_m=40_000.0
    )
    outside = CaptureSimulator(config=config)
    rng = np.random.default_rng(5)
    flagged: list[bool] = []
    while len(flagged) < 40:
        local = outside.draw_local(rng)
        if outside.outside_distance_m(*local) < 20_000.0:
            continue
        capture = outside.simulate(rng, sample_rate_hz=48_000.0, duration_s=0.5, local=local)
        block = quality(capture, domain)
        assert "outside_region" not in {r["code"] for r in block["reasons"]}  # a caution only
        flagged.append("outside_region" in codes(block))
    inside = [
        "outside_region" in codes(quality(simulator.simulate(rng, sample_rate_hz=48_000.0), domain))
        for _ in range(40)
    ]
    assert np.mean(flagged) >= 0.4 and np.mean(flagged) > np.mean(inside) + 0.15


def test_without_a_domain_the_checks_that_need_none_still_run(simulator):
    overloaded = CaptureSimulator(config=replace(simulator.config, full_scale_dbm=-95.0))
    capture = overloaded.simulate(np.random.default_rng(6), sample_rate_hz=12_000.0, duration_s=0.5)
    block = quality(capture, None)
    assert block["in_domain"] is None and "clipping" in codes(block)
    assert "outside_probability" not in block and "outside_evidence" not in block


def test_silence_is_flagged_as_no_signal(domain):
    rng = np.random.default_rng(7)
    noise_var = 10 ** ((domain.noise_dbm_per_hz - domain.full_scale_dbm) / 10) * 12_000.0
    iq = (rng.normal(size=(3, 6_000)) + 1j * rng.normal(size=(3, 6_000))) * np.sqrt(noise_var / 2)
    features, band = analyse(iq.astype(np.complex64), 12_000.0, PARAMS)
    block = assess(features, band, np.zeros(3), PARAMS, ("a", "b", "c"), domain)
    assert "no_signal" in codes(block)
    assert block["outside_evidence"] is None  # nothing heard: nothing to caution


def test_nominal_config_is_the_default_world():
    assert SimulatorConfig().outside_fraction == 0.0 and SimulatorConfig().oscillator_ppm == 0.0


def test_a_capture_far_from_the_models_frequency_is_flagged(simulator, domain):
    capture = simulator.simulate(np.random.default_rng(8), sample_rate_hz=48_000.0, duration_s=0.3)
    features, band = analyse(capture.iq, 48_000.0, PARAMS)
    args = (features, band, np.zeros(3), PARAMS, capture.receivers, domain)
    assert "frequency" in codes(assess(*args, frequency_mhz=433.5))
    assert "frequency" not in codes(assess(*args, frequency_mhz=145.2))


def test_a_domain_without_a_threshold_reads_the_default_and_a_bad_one_is_refused(domain):
    data = domain.to_metadata()
    assert data["outside_evidence"] == OUTSIDE_EVIDENCE
    del data["outside_evidence"]  # a model.json written before the threshold was recorded
    assert Domain.from_metadata(data).outside_evidence == OUTSIDE_EVIDENCE
    assert Domain.from_metadata({**data, "outside_evidence": 1.2}).outside_evidence == 1.2
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="outside_evidence must be a positive number"):
            Domain.from_metadata({**data, "outside_evidence": bad})
    # the share the threshold is fitted to: a quarter unless the model.json says otherwise
    assert data["outside_caution_share"] == OUTSIDE_CAUTION_SHARE == 0.25
    del data["outside_caution_share"]
    assert Domain.from_metadata(data).outside_caution_share == 0.25
    share = {**data, "outside_caution_share": 0.4}
    assert Domain.from_metadata(share).outside_caution_share == 0.4
    for bad in (0.0, 1.0, -0.2, 1.5, float("nan")):
        with pytest.raises(ValueError, match="outside_caution_share must lie between 0 and 1"):
            Domain.from_metadata({**data, "outside_caution_share": bad})


def test_the_caution_reads_the_domains_own_threshold(simulator, domain):
    rng = np.random.default_rng(9)
    captures = [simulator.simulate(rng, sample_rate_hz=48_000.0, duration_s=0.3) for _ in range(30)]
    evidence: list[float] = []
    for capture in captures:
        features, _ = analyse(capture.iq, capture.sample_rate_hz, PARAMS)
        factor = capture_outside_evidence(features, PARAMS, domain)
        assert factor is not None and factor > 0  # every capture is heard
        evidence.append(factor)
    threshold = float(np.median(evidence))
    own = replace(domain, outside_evidence=threshold)
    blocks = [quality(c, own) for c in captures]
    cautioned = ["outside_region" in codes(block) for block in blocks]
    # the same captures, the same evidence: cautioned exactly where it passes the threshold
    assert cautioned == [e > threshold for e in evidence]
    # and the block says both as numbers, for a client that would draw its own line
    assert [b["outside_evidence"] for b in blocks] == evidence  # to the bit: the same sums
    assert {b["outside_threshold"] for b in blocks} == {threshold}
    detail = next(c["detail"] for c in quality(captures[int(np.argmax(evidence))], own)["cautions"])
    assert f"Bayes factor {max(evidence):.2f}, the model cautions from {threshold:.2f}" in detail
    assert not any(
        "outside_region" in codes(quality(c, replace(own, outside_evidence=1e9))) for c in captures
    )


def test_the_fitted_threshold_cautions_its_share_of_the_captures_inside():
    evidence = np.random.default_rng(10).lognormal(0.0, 0.3, 2_000)
    threshold = fit_outside_evidence(np.append(evidence, [np.nan, np.nan]))  # unheard: ignored
    assert np.mean(evidence > threshold) == pytest.approx(OUTSIDE_CAUTION_SHARE, abs=1e-3)
    assert np.mean(evidence > fit_outside_evidence(evidence, share=0.1)) == pytest.approx(
        0.1, abs=1e-3
    )
    with pytest.raises(ValueError, match="no captures inside the region"):
        fit_outside_evidence(np.array([np.nan]))
    with pytest.raises(ValueError, match="between 0 and 1"):
        fit_outside_evidence(evidence, share=1.0)


def test_how_far_a_position_lies_outside_the_region(domain):
    south, north, west, east = domain.region
    assert domain.outside_m((south + north) / 2, (west + east) / 2) == 0.0
    assert domain.outside_m(north + 0.1, (west + east) / 2) == pytest.approx(11_120, rel=0.01)
    corner = domain.outside_m(south - 0.1, east + 0.1)  # beyond a corner: both ways
    assert corner == pytest.approx(np.hypot(11_120, 0.1 * 78_800), rel=0.02)
