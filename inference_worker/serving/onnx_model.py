"""The onnxruntime session of a localization model: the only module that imports onnxruntime."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from inference_worker.core.contract import ModelError, load_metadata, model_input
from inference_worker.core.ellipse import decode_output, describe

RUN_CHUNK = 16
"""Most captures one ONNX run takes: a run costs the same per capture at any batch size, but
onnxruntime keeps the memory of the largest batch it ran (batch 16: +19 MB, 64: +87 MB)."""

log = logging.getLogger(__name__)


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
        """Run one made-up capture the whole way a job takes it (features, the domain's checks,
        inference, ellipses): metadata that loads but cannot serve (a hand-edited parameter of
        the wrong kind) refuses the model here, where a reload keeps the model served, instead
        of failing each job; and the first job finds the caches built."""
        metadata = self.metadata
        rate = max(12_000.0, float(metadata.features.bandwidth_hz))
        rng = np.random.default_rng(0)
        n = int(rate)  # one second
        # As loud as the simulator's captures get (features up to ~3 of the model's units).
        noise = rng.normal(scale=1e-5, size=(2, len(metadata.receivers), n)).astype(np.float32)
        tone = np.exp(2j * np.pi * 1_000.0 / rate * np.arange(n)).astype(np.complex64)
        levels = 1e-3 * 10.0 ** (-np.arange(len(metadata.receivers)) / 2.0)  # unequal powers
        iq = noise[0] + 1j * noise[1] + levels[:, None] * tone
        started = time.perf_counter()
        try:
            features, _ = model_input(iq, rate, metadata.receiver_ids, metadata)
            estimate = decode_output(self.predict(features[None])[0], metadata.outputs)
            describe(estimate, radius_scales=metadata.ellipse_radius_scales)
        except (TypeError, ValueError, ArithmeticError, LookupError) as exc:
            raise ModelError(
                f"model {metadata.name} {metadata.version} cannot locate a capture: {exc!r}"
            ) from None
        return time.perf_counter() - started

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Run the model on ``(batch, 3, 128, 32)`` float32 features; returns ``(batch, 4|5)``
        (in runs of at most :data:`RUN_CHUNK` captures)."""
        outputs = [
            self._session.run([self.output_name], {self.input_name: features[i : i + RUN_CHUNK]})[0]
            for i in range(0, max(len(features), 1), RUN_CHUNK)
        ]
        output = outputs[0] if len(outputs) == 1 else np.concatenate(outputs)
        return np.asarray(output, dtype=np.float64)
