"""Captures at known positions: the CSV, its checks, and calibrating a real model on them."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from inference_worker.core.contract import file_sha256
from inference_worker.science.calibration import (
    OUTSIDE_CAUTION_SHARE,
    coverage_at,
    scale_spread,
)
from inference_worker.science.known_captures import (
    KnownCapturesError,
    load_known_captures,
    squared_distances,
    write_known_captures,
)
from inference_worker.science.simulator import CaptureSimulator
from inference_worker.serving.onnx_model import LocalizationModel


def simulated(simulator: CaptureSimulator, count: int, seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        c = simulator.simulate(rng, sample_rate_hz=12_000.0, duration_s=0.25)
        yield c.iq, c.sample_rate_hz, c.frequency_mhz, c.lat, c.lon, c.receivers


@pytest.fixture(scope="module")
def harsh_world(tmp_path_factory, simulator):
    """A deployment whose shadowing is harsher than the simulator's: 9 dB, exponent 3.5."""
    harsh = simulator.with_config(
        replace(simulator.config, shadowing_sigma_db=9.0, path_loss_exponent=3.5)
    )
    root = tmp_path_factory.mktemp("known")
    return (
        write_known_captures(root / "calibration", simulated(harsh, 150, 1)),
        write_known_captures(root / "check", simulated(harsh, 150, 2)),
    )


def test_written_captures_read_back_with_their_truth(tmp_path, simulator):
    path = write_known_captures(tmp_path, simulated(simulator, 3, 0))
    captures = load_known_captures(path)
    first = next(simulated(simulator, 1, 0))
    assert len(captures) == 3 and captures[0].line == 2
    assert captures[0].lat == pytest.approx(first[3], abs=1e-6)
    assert captures[0].receivers == tuple(first[5])
    np.testing.assert_array_equal(np.load(captures[0].file), first[0])


@pytest.mark.parametrize(
    ("header", "row", "message"),
    [
        ("file,sample_rate_hz,lat,lon", "a.npy,12000,45,7", "missing column\\(s\\) frequency_mhz"),
        ("file,sample_rate_hz,frequency_mhz,lat,lon", "gone.npy,12000,145.5,45,7", ":2: capture"),
        ("file,sample_rate_hz,frequency_mhz,lat,lon", "a.npy,12000,145.5,95,7", "not on Earth"),
        ("file,sample_rate_hz,frequency_mhz,lat,lon", "a.npy,fast,145.5,45,7", "not a number"),
        ("file,sample_rate_hz,frequency_mhz,lat,lon", "a.npy,-1,145.5,45,7", "must be positive"),
        ("file,sample_rate_hz,frequency_mhz,lat,lon", "", "no captures"),
        (
            "file,sample_rate_hz,frequency_mhz,lat,lon",
            "a.npy,12000",
            ":2: frequency_mhz is missing",
        ),
    ],
)
def test_a_bad_captures_file_is_refused_naming_the_line(tmp_path, header, row, message):
    np.save(tmp_path / "a.npy", np.ones((3, 1024), np.complex64))
    path = tmp_path / "captures.csv"
    path.write_text(f"{header}\n{row}\n" if row else f"{header}\n")
    with pytest.raises(KnownCapturesError, match=message):
        load_known_captures(path)


def test_a_spreadsheets_export_reads_and_what_is_no_csv_text_is_refused(tmp_path):
    """A byte-order mark before the header (as spreadsheets write UTF-8 CSV) is not part of
    the first column's name; a file that is not UTF-8 text, or a field past the csv module's
    limit, says so."""
    np.save(tmp_path / "a.npy", np.ones((3, 1024), np.complex64))
    path = tmp_path / "captures.csv"
    text = "file,sample_rate_hz,frequency_mhz,lat,lon\r\na.npy,12000,145.5,45,7\r\n"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert [c.lat for c in load_known_captures(path)] == [45.0]
    path.write_bytes(b"\xff\xfe" + text.encode("utf-16-le"))
    with pytest.raises(KnownCapturesError, match="not a UTF-8 text file"):
        load_known_captures(path)
    path.write_text(f'file,sample_rate_hz,frequency_mhz,lat,lon\n"{"x" * 200_000}",1,2,3,4\n')
    with pytest.raises(KnownCapturesError, match="not a readable CSV file"):
        load_known_captures(path)


def test_a_capture_the_service_would_refuse_is_named(tmp_path, model_dir):
    np.save(tmp_path / "two.npy", np.ones((2, 4096), np.complex64))
    path = tmp_path / "captures.csv"
    path.write_text("file,sample_rate_hz,frequency_mhz,lat,lon\ntwo.npy,12000,145.5,45,7.5\n")
    with pytest.raises(KnownCapturesError, match="line 2 \\(two.npy\\): IQ must have shape"):
        squared_distances(LocalizationModel(model_dir), load_known_captures(path))


def test_receivers_in_another_order_are_put_in_the_models(tmp_path, simulator, model_dir):
    model = LocalizationModel(model_dir)
    iq, rate, frequency, lat, lon, receivers = next(simulated(simulator, 1, 4))
    in_order = write_known_captures(tmp_path / "a", [(iq, rate, frequency, lat, lon, receivers)])
    swapped = (iq[[2, 0, 1]], rate, frequency, lat, lon, [receivers[i] for i in (2, 0, 1)])
    reordered = write_known_captures(tmp_path / "b", [swapped])
    a = squared_distances(model, load_known_captures(in_order)).d2
    b = squared_distances(model, load_known_captures(reordered)).d2
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_calibrating_on_a_harsher_world_makes_its_other_captures_hold(
    tmp_path, harsh_world, model_dir
):
    from tools.recalibrate_model import recalibrate_on_known

    calibration, check = harsh_world
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    before = squared_distances(LocalizationModel(copy), load_known_captures(check)).d2
    onnx_before = file_sha256(copy / "model.onnx")

    factor = recalibrate_on_known(copy, calibration, check=True)  # a check changes nothing
    assert file_sha256(copy / "model.onnx") == onnx_before
    assert factor > 1.05  # the packaged ellipses are too small for 9 dB of shadowing

    assert recalibrate_on_known(copy, calibration, check=False) == factor
    metadata = json.loads((copy / "model.json").read_text())
    assert metadata["sha256"] == file_sha256(copy / "model.onnx") != onnx_before
    assert metadata["training"]["calibration"]["world"] == "known captures"
    # a version of its own: results, job records and the result cache never mix the two
    original = json.loads((model_dir / "model.json").read_text())["version"]
    assert metadata["version"] == f"{original}-cal.{metadata['sha256'][:8]}"
    calibrated = LocalizationModel(copy)
    after = squared_distances(calibrated, load_known_captures(check)).d2
    # the model's sigmas grew by the factor, so each distance shrank by its square
    np.testing.assert_allclose(after, before / factor**2, rtol=1e-3)
    # and its drawn ellipses were fitted level by level
    radii = calibrated.metadata.ellipse_radius_scales
    assert set(radii) == {0.6827, 0.95}
    assert set(metadata["outputs"]["ellipse_radius_scales"]) == {"68", "95"}
    held_before = coverage_at(before, 1.0)
    held_after = coverage_at(after, 1.0, radius_scales=radii)
    assert held_after[2] > held_before[2] and abs(held_after[2] - 0.95) < abs(held_before[2] - 0.95)
    assert abs(held_after[0] - 0.3935) < abs(held_before[0] - 0.3935)
    # and the outside_region caution's threshold, to mark a quarter of the captures inside
    caution = metadata["training"]["calibration"]["outside_caution"]
    assert metadata["domain"]["outside_evidence"] == caution["threshold"]
    domain = calibrated.metadata.domain
    assert domain is not None and domain.outside_evidence == caution["threshold"]
    found = squared_distances(calibrated, load_known_captures(calibration))
    heard = found.outside_evidence[np.isfinite(found.outside_evidence)]
    assert (found.outside_m == 0).all() and len(heard) == caution["inside_captures"] >= 100
    marked = np.mean(heard > domain.outside_evidence)
    assert marked == pytest.approx(OUTSIDE_CAUTION_SHARE, abs=0.02)
    assert metadata["domain"]["outside_caution_share"] == caution["share"] == 0.25

    # a share of the deployment's choosing is written with its threshold, and kept by a
    # recalibration that names none
    for share, written in ((0.4, 0.4), (None, 0.4)):
        recalibrate_on_known(copy, calibration, check=False, caution_share=share)
        domain = LocalizationModel(copy).metadata.domain
        assert domain is not None and domain.outside_caution_share == written
        assert np.mean(heard > domain.outside_evidence) == pytest.approx(0.4, abs=0.02)


def test_the_scale_spread_narrows_with_more_captures():
    rng = np.random.default_rng(0)
    few = rng.chisquare(2, 100)
    many = rng.chisquare(2, 2_000)
    low_few, high_few = scale_spread(few, resamples=40)
    low_many, high_many = scale_spread(many, resamples=40)
    assert low_many <= 1.0 + 0.05 and high_many >= 1.0 - 0.05
    assert high_many - low_many < high_few - low_few


def test_a_model_calibrated_again_replaces_its_calibration_suffix():
    from tools.model_calibration import calibrated_version

    once = calibrated_version("2.0.0", "ab" * 32)
    assert once == "2.0.0-cal.abababab"
    assert calibrated_version(once, "cd" * 32) == "2.0.0-cal.cdcdcdcd"
    assert calibrated_version("2.0.0-calm", "ef" * 32) == "2.0.0-calm-cal.efefefef"


def test_two_models_under_one_version_label_never_share_cached_results():
    import redis

    from inference_worker.storage.redis_store import RedisStore

    store = RedisStore(client=redis.Redis(), prefix="p:")  # never connects: keys only
    assert store.cache_key("2.0.0", "a" * 64, "f") != store.cache_key("2.0.0", "b" * 64, "f")


def test_the_caution_is_fitted_only_where_there_is_enough_to_fit_it(simulator, capsys):
    from inference_worker.science.world import World, domain_of
    from tools.model_calibration import fit_caution

    domain = domain_of(simulator, World())
    rng = np.random.default_rng(11)
    evidence = rng.lognormal(0.2, 0.2, 400)
    outside_m = np.where(np.arange(400) < 300, 0.0, 30_000.0)
    evidence[300:] += 0.5  # the emitters far outside give more evidence of it
    evidence[:5] = np.nan  # unheard: not counted
    record = fit_caution(domain, evidence, outside_m <= 0, outside_m)
    assert record is not None and record["inside_captures"] == 295
    assert record["inside_after"] == pytest.approx(OUTSIDE_CAUTION_SHARE, abs=0.01)
    assert record["far_outside_captures"] == 100
    assert record["far_outside_after"] >= record["inside_after"]
    out = capsys.readouterr().out
    assert "captures inside the region" in out
    # and what other lines would trade on these captures, the model's own until now marked
    lines = [line for line in out.splitlines() if line.startswith("  threshold ")]
    assert len(lines) == 7 and sum("(the model's)" in line for line in lines) == 1
    assert "threshold 1.3500" in next(row for row in lines if "model's" in row)
    assert any(f"threshold {record['threshold']:.4f}" in row for row in lines)  # the fitted one
    # too few captures inside, or a domain with no prior outside: the threshold stays
    assert fit_caution(domain, evidence[:90], np.ones(90, bool)) is None
    assert "too few to fit the threshold that marks 25 % of them; it stays 1.350" in (
        capsys.readouterr().out
    )
    assert fit_caution(domain_of(simulator), evidence, outside_m <= 0) is None
    # a domain's own share: more cautioned inside, and at least as many far outside
    wider = fit_caution(
        replace(domain, outside_caution_share=0.4), evidence, outside_m <= 0, outside_m
    )
    assert wider is not None and wider["share"] == 0.4
    assert wider["inside_after"] == pytest.approx(0.4, abs=0.01)
    assert wider["far_outside_after"] >= record["far_outside_after"]
    assert "fitted to mark 40 % inside" in capsys.readouterr().out


def test_a_share_is_given_only_to_a_domain_whose_caution_can_fire(simulator, capsys):
    from inference_worker.science.world import World, domain_of
    from tools.model_calibration import caution_domain

    robust = domain_of(simulator, World())
    shared = caution_domain(robust, 0.4)
    assert shared is not None and shared.outside_caution_share == 0.4
    assert caution_domain(robust, None) is robust
    nominal = domain_of(simulator)  # trained with no emitters outside: nothing to fit
    assert caution_domain(nominal, 0.4) is nominal
    assert "there is no threshold to fit" in capsys.readouterr().out


def test_the_caution_share_argument_refuses_what_cannot_be_fitted():
    import argparse

    from tools.model_calibration import CAUTION_SHARE

    assert CAUTION_SHARE("0.33") == 0.33
    for bad in ("0", "1", "-0.1", "nan", "a quarter"):
        with pytest.raises(argparse.ArgumentTypeError):
            CAUTION_SHARE(bad)
