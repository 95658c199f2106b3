"""The localization model: metadata, integrity check and the onnxruntime session.

This is the only module that imports onnxruntime. A model is a folder with ``model.onnx`` and
``model.json`` (its metadata: version, receivers in channel order, feature parameters, output
layout and units, evaluation metrics, sha256 of the ONNX file).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inference_worker.features import FeatureParams

log = logging.getLogger(__name__)

OUTPUT_LAYOUTS = {
    4: ("lat_deg", "lon_deg", "sigma_east_m", "sigma_north_m"),
    5: ("lat_deg", "lon_deg", "sigma_east_m", "sigma_north_m", "rho"),
}


class ModelError(RuntimeError):
    """The model folder is missing, malformed, or does not match its metadata."""


@dataclass(frozen=True)
class Receiver:
    id: str
    lat: float
    lon: float


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    version: str
    receivers: tuple[Receiver, ...]
    features: FeatureParams
    outputs: tuple[str, ...]
    sha256: str
    architecture: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def receiver_ids(self) -> tuple[str, ...]:
        return tuple(r.id for r in self.receivers)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelMetadata:
        try:
            outputs = tuple(data["outputs"]["layout"])
            if outputs not in OUTPUT_LAYOUTS.values():
                raise ModelError(f"unsupported output layout {list(outputs)}")
            return cls(
                name=str(data["name"]),
                version=str(data["version"]),
                receivers=tuple(
                    Receiver(str(r["id"]), float(r["lat"]), float(r["lon"]))
                    for r in data["receivers"]
                ),
                features=FeatureParams.from_metadata(data["features"]),
                outputs=outputs,
                sha256=str(data["sha256"]),
                architecture=str(data.get("architecture", "")),
                metrics=dict(data.get("metrics", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"model metadata is malformed: {exc!r}") from None

    @classmethod
    def load(cls, path: Path) -> ModelMetadata:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ModelError(f"model metadata not found: {path}") from None
        except json.JSONDecodeError as exc:
            raise ModelError(f"model metadata {path} is not JSON: {exc}") from None
        return cls.from_json(data)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_metadata(model_dir: Path, *, verify: bool = True) -> ModelMetadata:
    """Read a model folder's metadata; with ``verify`` also check the ONNX file's sha256."""
    metadata = ModelMetadata.load(model_dir / "model.json")
    if verify:
        onnx_file = model_dir / "model.onnx"
        if not onnx_file.is_file():
            raise ModelError(f"model file not found: {onnx_file}")
        actual = file_sha256(onnx_file)
        if actual != metadata.sha256:
            raise ModelError(
                f"model file {onnx_file} has sha256 {actual}, metadata says {metadata.sha256}"
            )
    return metadata


class LocalizationModel:
    """An onnxruntime session with its metadata; create one per worker process, after fork."""

    def __init__(
        self, model_dir: Path, *, intra_op_threads: int = 1, inter_op_threads: int = 1
    ) -> None:
        import onnxruntime as ort

        self.metadata = load_metadata(model_dir, verify=True)
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        started = time.perf_counter()
        try:
            self._session = ort.InferenceSession(
                str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(f"onnxruntime cannot load {model_dir / 'model.onnx'}: {exc}") from None
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1:
            raise ModelError(f"model must have one input; it has {len(inputs)}")
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        self._check_contract(inputs[0].shape, outputs[0].shape)
        self.load_seconds = time.perf_counter() - started
        self.warmup_seconds = self._warm_up()
        log.info(
            "model %s %s loaded in %.3f s, warm-up %.3f s",
            self.metadata.name,
            self.metadata.version,
            self.load_seconds,
            self.warmup_seconds,
        )

    @property
    def version(self) -> str:
        return self.metadata.version

    @property
    def input_shape(self) -> tuple[int, int, int]:
        params = self.metadata.features
        return (len(self.metadata.receivers), params.n_mels, params.n_frames)

    def _check_contract(self, input_shape: list[Any], output_shape: list[Any]) -> None:
        expected = list(self.input_shape)
        fixed = [d for d in input_shape[1:]]
        if len(input_shape) != 4 or any(
            isinstance(d, int) and d != e for d, e in zip(fixed, expected, strict=True)
        ):
            raise ModelError(f"model input shape {input_shape} does not match (batch, {expected})")
        width = output_shape[-1] if output_shape else None
        if isinstance(width, int) and width != len(self.metadata.outputs):
            raise ModelError(
                f"model output width {width} does not match the metadata layout "
                f"{list(self.metadata.outputs)}"
            )

    def _warm_up(self) -> float:
        started = time.perf_counter()
        self.predict(np.zeros((1, *self.input_shape), dtype=np.float32))
        return time.perf_counter() - started

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Run the model on ``(batch, 3, 128, 32)`` float32 features; returns ``(batch, 4|5)``."""
        (output,) = self._session.run([self.output_name], {self.input_name: features})
        return np.asarray(output, dtype=np.float64)
