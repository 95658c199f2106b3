"""Export of a trained localization network: the ONNX graph of the service's contract with its
``model.json``, and a check that onnxruntime reproduces PyTorch on the same inputs."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import torch

from inference_worker.core.features import FeatureParams
from inference_worker.science.simulator import CaptureSimulator
from tools.localization_net import ServiceContract


def export(
    contract: ServiceContract,
    out: Path,
    params: FeatureParams,
    simulator: CaptureSimulator,
    sample: torch.Tensor,
    training: dict,
    domain: dict,
    name: str,
    version: str,
) -> Path:
    """Write ``model.onnx`` and its ``model.json`` (network, domain, features, training) to
    ``out``."""
    contract.eval()
    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        torch.onnx.export(
            contract,
            (sample[:2],),
            out / "model.onnx",
            dynamo=False,
            input_names=["features"],
            output_names=["estimate"],
            dynamic_axes={"features": {0: "batch"}, "estimate": {0: "batch"}},
            opset_version=17,
        )
    data = (out / "model.onnx").read_bytes()
    metadata = {
        "name": name,
        "version": version,
        "architecture": (
            "compact ConvNeXt (3 stages 32/64/128, one block each) + received-power branch, "
            "Gaussian NLL in a local metric frame, sigma scale fitted on validation"
        ),
        "receivers": [{"id": r.id, "lat": r.lat, "lon": r.lon} for r in simulator.receivers],
        "domain": domain,
        "features": params.to_metadata(),
        "input": {
            "name": "features",
            "shape": ["batch", 3, params.n_mels, params.n_frames],
            "dtype": "float32",
        },
        "outputs": {
            "name": "estimate",
            "layout": ["lat_deg", "lon_deg", "sigma_east_m", "sigma_north_m", "rho"],
            "units": ["degree", "degree", "metre", "metre", "1"],
        },
        "training": training,
        "metrics": {},
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    (out / "model.json").write_text(json.dumps(metadata, indent=2) + "\n")
    return out


def check_onnx_agrees(
    out: Path, contract: ServiceContract, features: torch.Tensor, simulator: CaptureSimulator
) -> dict[str, float]:
    """Largest differences between PyTorch and onnxruntime on the same inputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = contract(features).numpy().astype(np.float64)
    (actual,) = session.run(None, {"features": features.numpy()})
    actual = actual.astype(np.float64)
    m_lat, m_lon = simulator.m_per_deg
    position_m = np.hypot(
        (actual[:, 0] - expected[:, 0]) * m_lat, (actual[:, 1] - expected[:, 1]) * m_lon
    )
    return {
        "position_m": float(position_m.max()),
        "sigma_relative": float(np.max(np.abs(actual[:, 2:4] / expected[:, 2:4] - 1.0))),
        "rho": float(np.max(np.abs(actual[:, 4] - expected[:, 4]))),
    }
