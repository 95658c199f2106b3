"""The ONNX model contract with onnxruntime, and refusal of a file that does not match."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from inference_worker.core.contract import ModelError, load_metadata
from inference_worker.serving.onnx_model import LocalizationModel

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


def test_malformed_metadata_is_refused(model_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    metadata = json.loads((copy / "model.json").read_text())
    del metadata["receivers"]
    (copy / "model.json").write_text(json.dumps(metadata))
    with pytest.raises(ModelError, match="malformed"):
        load_metadata(copy)


def test_build_tool_reproduces_the_committed_model(centroid_model_dir, tmp_path):
    spec = importlib.util.spec_from_file_location(
        "build", ROOT / "tools" / "build_centroid_model.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.write_model(tmp_path)
    assert (tmp_path / "model.onnx").read_bytes() == (
        centroid_model_dir / "model.onnx"
    ).read_bytes()
    assert json.loads((tmp_path / "model.json").read_text()) == json.loads(
        (centroid_model_dir / "model.json").read_text()
    )
