"""Writing a new calibration into a model folder: the sigma scale in the constants of its ONNX
graph, the drawn ellipses' radius factors, the ``outside_region`` caution's threshold and the
fit's record in ``model.json``, and, for a model calibrated again, a version of its own."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from inference_worker.core.contract import file_sha256
from inference_worker.core.domain import Domain
from inference_worker.science.calibration import OUTSIDE_CAUTION_SHARE, fit_outside_evidence
from inference_worker.science.datasets import Dataset
from tools.evaluation_methods import outside_evidences

FEW_INSIDE = 100
"""Captures inside the region, heard, below which the caution's threshold is not fitted again."""
FAR_OUTSIDE_M = 20_000.0


def rescale_graph(path: Path, current: float, factor: float) -> int:
    """Multiply the scalar constants equal to ``current`` (the sigma scale) by ``factor``."""
    graph = onnx.load(str(path))
    changed = 0
    for node in graph.graph.node:
        if node.op_type != "Constant":
            continue
        for attribute in node.attribute:
            if attribute.name != "value" or list(attribute.t.dims):
                continue
            value = numpy_helper.to_array(attribute.t)
            if value.dtype.kind == "f" and abs(float(value) - current) <= 1e-6 * max(1.0, current):
                scaled = np.asarray(float(value) * factor, dtype=value.dtype)
                attribute.t.CopyFrom(numpy_helper.from_array(scaled, attribute.t.name))
                changed += 1
    if changed != 2:
        raise SystemExit(
            f"error: expected the sigma scale {current} in 2 constants of {path}, found {changed}"
        )
    onnx.save(graph, str(path))
    return changed


def label(level: float) -> str:
    return f"{round(level * 100)}"


def calibrated_version(version: str, sha256: str) -> str:
    """The version label of a model calibrated again: its own, with ``-cal.`` and the first
    8 hex digits of its new file's sha256 (replacing an earlier such suffix)."""
    base = re.sub(r"-cal\.[0-9a-f]{8}$", "", version)
    return f"{base}-cal.{sha256[:8]}"


def fit_caution(
    domain: Domain | None,
    evidence: np.ndarray,
    inside: np.ndarray,
    outside_m: np.ndarray | None = None,
) -> dict | None:
    """The ``outside_region`` threshold that cautions :data:`OUTSIDE_CAUTION_SHARE` of the
    calibration captures of emitters inside the region (``evidence``: each capture's Bayes
    factor, NaN where nothing is heard; ``inside``: its emitter lies in the region), printed
    with what the caution marks before and after, inside and (given ``outside_m``, each
    emitter's distance outside) more than 20 km outside. None, saying why, where it is not
    fitted: no domain, no prior outside the region, too few captures inside."""
    if domain is None or domain.outside_share <= 0.0:
        return None
    heard = np.isfinite(evidence)
    values = evidence[heard & inside]
    if len(values) < FEW_INSIDE:
        print(
            f"outside_region caution: {len(values)} captures inside the region, heard (under "
            f"{FEW_INSIDE}); its threshold stays {domain.outside_evidence:.3f}",
            flush=True,
        )
        return None
    threshold = fit_outside_evidence(values)
    old = domain.outside_evidence
    record: dict = {
        "share": OUTSIDE_CAUTION_SHARE,
        "threshold": round(threshold, 4),
        "threshold_before": old,
        "inside_captures": int(len(values)),
        "inside_before": float(np.mean(values > old)),
        "inside_after": float(np.mean(values > threshold)),
    }
    text = (
        f"outside_region caution: threshold {old:.3f} -> {threshold:.3f}; it marks "
        f"{100 * record['inside_before']:.1f} -> {100 * record['inside_after']:.1f} % of the "
        f"{len(values)} captures inside the region"
    )
    if outside_m is not None:
        far = evidence[heard & (outside_m > FAR_OUTSIDE_M)]
        if len(far):
            record["far_outside_captures"] = int(len(far))
            record["far_outside_before"] = float(np.mean(far > old))
            record["far_outside_after"] = float(np.mean(far > threshold))
            text += (
                f", {100 * record['far_outside_before']:.1f} -> "
                f"{100 * record['far_outside_after']:.1f} % of the {len(far)} more than 20 km "
                "outside"
            )
    print(text, flush=True)
    return record


def fit_caution_on(domain: Domain | None, data: Dataset, params) -> dict | None:
    """:func:`fit_caution` on simulated captures (``params``: the features' parameters they
    were computed with): each one's Bayes factor and how far its emitter lies outside."""
    if domain is None:
        return None
    evidence = outside_evidences(domain, data, params)
    return fit_caution(domain, evidence, data.outside_m <= 0, data.outside_m)


def write_scale(
    model_dir: Path,
    factor: float,
    calibration: dict,
    *,
    radius_scales: dict[float, float] | None = None,
    relabel: bool = False,
    version: str | None = None,
    outside_evidence: float | None = None,
) -> str:
    """Multiply the model's sigma scale by ``factor`` in its ONNX graph and ``model.json``, and
    set its drawn ellipses' radius factors (none: drawn from the sigmas alone) and, where given,
    its domain's ``outside_region`` threshold; with ``relabel``, give it a version of its own
    (``version``, else :func:`calibrated_version`) so that results, job records and the result
    cache never mix it with the model it was made from. Returns the version written."""
    metadata_path = model_dir / "model.json"
    metadata = json.loads(metadata_path.read_text())
    if outside_evidence is not None and metadata.get("domain"):
        metadata["domain"]["outside_evidence"] = round(float(outside_evidence), 4)
    current = float(metadata["training"]["sigma_scale"])
    rescale_graph(model_dir / "model.onnx", current, factor)
    if radius_scales:
        metadata["outputs"]["ellipse_radius_scales"] = {
            label(p): round(f, 5) for p, f in radius_scales.items()
        }
    else:
        metadata["outputs"].pop("ellipse_radius_scales", None)
    metadata["sha256"] = file_sha256(model_dir / "model.onnx")
    if relabel:
        metadata["version"] = version or calibrated_version(metadata["version"], metadata["sha256"])
    metadata["training"]["sigma_scale"] = current * factor
    metadata["training"]["calibration"] = calibration
    metadata["metrics"] = {}  # measured with the old scale: evaluate again
    metadata_path.write_text(json.dumps(metadata, indent=2) + "\n")
    return str(metadata["version"])
