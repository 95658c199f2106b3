"""The ONNX model contract with onnxruntime, and refusal of a file that does not match."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from inference_worker.core.capture import CaptureError
from inference_worker.core.contract import ModelError, load_metadata, model_input
from inference_worker.serving.onnx_model import LocalizationModel
from tests.helpers import edited_copy

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("which", ["model_dir", "centroid_model_dir"])
def test_model_runs_the_service_contract(which, request):
    model = LocalizationModel(request.getfixturevalue(which))
    output = model.predict(np.zeros((5, 3, 128, 32), dtype=np.float32))
    assert output.shape == (5, len(model.metadata.outputs))
    assert model.input_name and model.output_name
    assert model.metadata.receiver_ids == ("torino", "montanaro", "giaveno")


def test_louder_receiver_pulls_the_centroid_towards_it(centroid_model_dir):
    model = LocalizationModel(centroid_model_dir)
    features = np.zeros((1, 3, 128, 32), dtype=np.float32)
    features[0, 1] += 3.0  # montanaro 60 dB louder
    lat, lon = model.predict(features)[0, :2]
    montanaro = model.metadata.receivers[1]
    assert abs(lat - montanaro.lat) < 0.01 and abs(lon - montanaro.lon) < 0.01


def test_model_whose_sha256_does_not_match_is_refused(model_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[-1] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        LocalizationModel(copy)


def unreadable_model(tmp_path: Path, kind: str) -> Path:
    """A model folder whose model.json cannot be read as JSON, of one ``kind``."""
    if kind == "a-file-for-the-folder":
        (tmp_path / "model").write_text("{}")
        return tmp_path / "model"
    folder = tmp_path / "model"
    folder.mkdir()
    if kind == "a-folder-for-the-file":
        (folder / "model.json").mkdir()
    elif kind == "not-utf-8":
        (folder / "model.json").write_bytes(b"\xff\xfe{}")
    else:  # nested past the JSON parser's recursion
        (folder / "model.json").write_text("[" * 100_000)
    return folder


@pytest.mark.parametrize(
    ("kind", "why"),
    [
        ("a-file-for-the-folder", "cannot be read: Not a directory"),
        ("a-folder-for-the-file", "cannot be read: Is a directory"),
        ("not-utf-8", "is not JSON: 'utf-8' codec can't decode"),
        ("nested-too-deep", "is not JSON: maximum recursion depth exceeded"),
    ],
)
def test_a_model_json_that_cannot_be_read_is_refused_saying_why(tmp_path, kind, why):
    """``models register /dev/null`` (and such a HEIMDALL_MODEL_DIR) was a traceback."""
    with pytest.raises(ModelError, match=re.escape(why)):
        load_metadata(unreadable_model(tmp_path, kind))


@pytest.mark.parametrize(
    ("field", "value"),
    [("receivers", None), ("features", [12_000]), ("domain", [1]), ("outputs", "mean")],
    ids=["missing-receivers", "features-not-an-object", "domain-a-list", "outputs-a-string"],
)
def test_malformed_metadata_is_refused(model_dir, tmp_path, field, value):
    """Whatever shape a field has, a broken model.json says so (never a bare traceback)."""

    def edit(metadata):
        if value is None:
            del metadata[field]
        else:
            metadata[field] = value

    with pytest.raises(ModelError, match="malformed"):
        load_metadata(edited_copy(model_dir, tmp_path / "model", edit))


@pytest.mark.parametrize(
    ("part", "name", "value", "fragment"),
    [
        ("features", "bandwidth_hz", "12000", "bandwidth_hz cannot be '12000'"),
        ("features", "n_frames", 0, "n_frames cannot be 0"),
        ("features", "std_db", 0.0, "std_db cannot be 0.0"),
        ("features", "mean_db", "-140", "mean_db cannot be '-140'"),
        ("features", "follow_carrier_hz", -1.0, "follow_carrier_hz cannot be -1.0"),
        ("receivers", "lat", 10**400, "OverflowError"),
    ],
)
def test_metadata_no_job_could_be_served_with_is_refused_when_it_loads(
    model_dir, tmp_path, part, name, value, fragment
):
    """A hand-edited model.json of such values loaded, and then failed every job (a text for
    a number, a zero frame count or scale) or raised OverflowError, a bare traceback."""

    def edit(metadata):
        target = metadata[part][0] if part == "receivers" else metadata[part]
        target[name] = value

    with pytest.raises(ModelError, match=f"malformed.*{re.escape(fragment)}"):
        load_metadata(edited_copy(model_dir, tmp_path / "model", edit))


def test_metadata_that_loads_but_cannot_locate_a_capture_refuses_the_model(model_dir, tmp_path):
    """The warm-up takes a made-up capture the whole way a job takes it: a domain receiver's
    latitude written as text loaded, and failed each job's quality checks."""

    def edit(metadata):
        metadata["domain"]["receivers"][0]["lat"] = "45.0"

    copy = edited_copy(model_dir, tmp_path / "model", edit)
    assert load_metadata(copy).domain is not None  # the metadata alone reads
    with pytest.raises(ModelError, match="cannot locate a capture"):
        LocalizationModel(copy)
    assert LocalizationModel(model_dir).warmup_seconds > 0  # the packaged model locates it


def test_build_tool_reproduces_the_committed_model(centroid_model_dir, tmp_path):
    spec = importlib.util.spec_from_file_location(
        "build", ROOT / "tools" / "build_centroid_model.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.write_model(tmp_path)
    assert (tmp_path / "model.onnx").read_bytes() == (
        centroid_model_dir / "model.onnx"
    ).read_bytes()
    assert json.loads((tmp_path / "model.json").read_text()) == json.loads(
        (centroid_model_dir / "model.json").read_text()
    )


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"50": 1.0}, "must map some of"),
        ({"95": 0.1}, "within 0.25..4"),
        ({"68": 1.7}, "nested"),  # the 68 % ellipse would reach beyond the 95 % one
        ({"68": 0.6}, "nested"),  # ... or inside the 1-sigma ellipse
    ],
)
def test_ellipse_radius_scales_that_make_no_sense_are_refused(model_dir, tmp_path, given, message):
    copy = edited_copy(
        model_dir, tmp_path / "model", lambda m: m["outputs"].update(ellipse_radius_scales=given)
    )
    with pytest.raises(ModelError, match=message):
        load_metadata(copy)


def test_ellipse_radius_scales_reach_the_results(model_dir, tmp_path):
    from inference_worker.serving.locating import describe_output

    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    metadata = json.loads((copy / "model.json").read_text())
    metadata["outputs"].pop("ellipse_radius_scales", None)  # drawn from the sigmas alone
    (copy / "model.json").write_text(json.dumps(metadata))
    plain = load_metadata(copy)
    metadata["outputs"]["ellipse_radius_scales"] = {"68": 0.97, "95": 1.02}
    (copy / "model.json").write_text(json.dumps(metadata))
    scaled = load_metadata(copy)
    assert scaled.ellipse_radius_scales == {0.6827: 0.97, 0.95: 1.02}
    assert plain.ellipse_radius_scales == {}
    row = np.array([45.0, 7.5, 3_000.0, 2_000.0, 0.1][: len(plain.outputs)])
    before = describe_output(row, plain, {})["ellipses"]
    after = describe_output(row, scaled, {})["ellipses"]
    for label, factor in (("68", 0.97), ("95", 1.02)):
        assert after[label]["semi_major_m"] == pytest.approx(factor * before[label]["semi_major_m"])


def test_a_capture_whose_power_overflows_is_refused_saying_why(model_dir):
    """Samples of magnitude 1e30 made every feature infinite; the model answered NaN and the job
    failed as "model output is not finite", which said nothing of the capture."""
    metadata = load_metadata(model_dir)
    rng = np.random.default_rng(0)
    iq = (rng.normal(size=(3, 12_000)) + 1j * rng.normal(size=(3, 12_000))).astype(np.complex64)
    features, _ = model_input(iq, 12_000.0, metadata.receiver_ids, metadata)
    assert np.isfinite(features).all()
    with pytest.raises(CaptureError, match=r"overflows single precision .* up to \d\.\d\de\+30"):
        model_input(iq * np.complex64(1e30), 12_000.0, metadata.receiver_ids, metadata)
