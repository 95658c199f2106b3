"""Write the power-weighted centroid ONNX model, a hand-built alternative to the trained model.

A real ONNX graph run by onnxruntime with the service's contract ``(B, 3, 128, 32) -> (B, 4)``:
per receiver it takes the strongest mel band of each frame, averages over frames, turns the three
levels into softmax weights and returns the weighted centroid of the receiver sites as
``[lat°, lon°]`` with a sigma that grows as the weights even out (less certain which receiver is
closest). Crude but honest, and deterministic: running this tool twice writes identical bytes.

    python tools/build_centroid_model.py [--out inference_worker/models/centroid]
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from inference_worker.science.files import staged_folder

ROOT = Path(__file__).resolve().parents[1]
RECEIVERS_FILE = ROOT / "inference_worker" / "data" / "receivers.json"
DEFAULT_OUT = ROOT / "inference_worker" / "models" / "centroid"
VERSION = "0.1.0"
# Normalized units: features are (dB - mean_db) / std_db, std_db = 20, so 0.5 = 10 dB.
SHARPNESS = 2.0
SIGMA_BASE_M = 4_000.0
SIGMA_SPREAD_M = 30_000.0


def build_graph(receivers: list[dict]) -> onnx.ModelProto:
    sites = np.array([[r["lat"], r["lon"]] for r in receivers], dtype=np.float32)
    inits = [
        numpy_helper.from_array(sites, "sites"),
        numpy_helper.from_array(np.array(SHARPNESS, dtype=np.float32), "sharpness"),
        numpy_helper.from_array(np.array(SIGMA_BASE_M, dtype=np.float32), "sigma_base"),
        numpy_helper.from_array(np.array(SIGMA_SPREAD_M, dtype=np.float32), "sigma_spread"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
    ]
    nodes = [
        helper.make_node("ReduceMax", ["features"], ["band_peak"], axes=[2], keepdims=0),
        helper.make_node("ReduceMean", ["band_peak"], ["level"], axes=[2], keepdims=0),
        helper.make_node("Mul", ["level", "sharpness"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["weights"], axis=1),
        helper.make_node("MatMul", ["weights", "sites"], ["position"]),
        helper.make_node("ReduceMax", ["weights"], ["dominance"], axes=[1], keepdims=1),
        helper.make_node("Sub", ["one", "dominance"], ["spread"]),
        helper.make_node("Mul", ["spread", "sigma_spread"], ["sigma_extra"]),
        helper.make_node("Add", ["sigma_extra", "sigma_base"], ["sigma"]),
        helper.make_node("Concat", ["position", "sigma", "sigma"], ["estimate"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "heimdall_centroid",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 3, 128, 32])],
        [helper.make_tensor_value_info("estimate", TensorProto.FLOAT, ["batch", 4])],
        initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="heimdall-tools"
    )
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def write_model(out: Path) -> Path:
    """Write the model into ``out``, in its place only once whole (see :func:`staged_folder`)."""
    with staged_folder(out) as work:
        _write_model(work)
    return out


def _write_model(out: Path) -> None:
    receivers = json.loads(RECEIVERS_FILE.read_text())["receivers"]
    model = build_graph(receivers)
    data = model.SerializeToString(deterministic=True)
    (out / "model.onnx").write_bytes(data)
    metadata = {
        "name": "heimdall-localization",
        "version": f"centroid-{VERSION}",
        "architecture": "power-weighted centroid (hand-built ONNX graph, not trained)",
        "receivers": [{"id": r["id"], "lat": r["lat"], "lon": r["lon"]} for r in receivers],
        "features": {
            "kind": "log_mel_psd_db_per_hz",
            "n_mels": 128,
            "n_frames": 32,
            "bandwidth_hz": 12000.0,
            "mel_break_hz": 700.0,
            "max_bin_hz": 12.0,
            "min_frame_samples": 16,
            "floor_db": -250.0,
            "mean_db": -140.0,
            "std_db": 20.0,
        },
        "input": {"name": "features", "shape": ["batch", 3, 128, 32], "dtype": "float32"},
        "outputs": {
            "name": "estimate",
            "layout": ["lat_deg", "lon_deg", "sigma_east_m", "sigma_north_m"],
            "units": ["degree", "degree", "metre", "metre"],
        },
        "metrics": {},
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    (out / "model.json").write_text(json.dumps(metadata, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="model folder to write")
    args = parser.parse_args()
    out = write_model(args.out)
    print(f"wrote {out / 'model.onnx'} and {out / 'model.json'}")


if __name__ == "__main__":
    main()
