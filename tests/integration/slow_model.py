"""A deliberately slow model for the time-limit tests: the centroid model, plus a loop that spins
in onnxruntime (C++, where no Python signal can interrupt it) for captures far louder than any
receiver hears, and not at all for ordinary ones."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

LOUD_THRESHOLD = 5.0
"""Normalized feature level (20 dB a unit above -140 dB/Hz) no ordinary capture reaches."""
LOUD_GAIN = 100_000.0
"""Amplitude gain that lifts a simulated capture's features far above the threshold."""


def spin_body() -> onnx.GraphProto:
    return helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["count_in", "step"], ["count_out"]),
        ],
        "spin",
        [
            helper.make_tensor_value_info("iteration", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("count_in", TensorProto.FLOAT, []),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("count_out", TensorProto.FLOAT, []),
        ],
        initializer=[numpy_helper.from_array(np.array(1.0, dtype=np.float32), "step")],
    )


def write_slow_model(centroid_dir: Path, out: Path, iterations_per_unit: float) -> Path:
    """Copy the centroid model to ``out`` with a loop of ``iterations_per_unit`` times the loud
    excess (features above :data:`LOUD_THRESHOLD`) iterations."""
    model = onnx.load(centroid_dir / "model.onnx")
    graph = model.graph
    output = graph.output[0]
    for node in graph.node:
        node.output[:] = ["estimate_raw" if o == output.name else o for o in node.output]
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(LOUD_THRESHOLD, dtype=np.float32), "loud"),
            numpy_helper.from_array(np.array(iterations_per_unit, dtype=np.float32), "per_unit"),
            numpy_helper.from_array(np.array(True), "keep_going"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("ReduceMax", ["features"], ["peak"], keepdims=0),
            helper.make_node("Sub", ["peak", "loud"], ["over"]),
            helper.make_node("Relu", ["over"], ["excess"]),
            helper.make_node("Mul", ["excess", "per_unit"], ["trips_float"]),
            helper.make_node("Cast", ["trips_float"], ["trips"], to=TensorProto.INT64),
            helper.make_node("Loop", ["trips", "keep_going", "zero"], ["spun"], body=spin_body()),
            helper.make_node("Mul", ["spun", "zero"], ["nothing"]),
            helper.make_node("Add", ["estimate_raw", "nothing"], [output.name]),
        ]
    )
    onnx.checker.check_model(model)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    data = model.SerializeToString(deterministic=True)
    (out / "model.onnx").write_bytes(data)
    metadata = json.loads((centroid_dir / "model.json").read_text())
    metadata.update(version="slow-test", sha256=hashlib.sha256(data).hexdigest())
    (out / "model.json").write_text(json.dumps(metadata, indent=2))
    return out
