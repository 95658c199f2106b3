"""Fitting a model's calibration and writing it into the model folder: the sigma scale (in the
constants of its ONNX graph), the drawn ellipses' radius factors, the ``outside_region``
caution's threshold and the share it marks, the fit's record in ``model.json``, and, for a model
calibrated again, a version of its own."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import overload

import numpy as np
import onnx
from onnx import numpy_helper

from inference_worker.cli.arguments import number
from inference_worker.core.contract import file_sha256
from inference_worker.core.domain import Domain
from inference_worker.science.calibration import (
    caution_trade,
    cautioned_share,
    coverage_at,
    fit_levels,
    fit_outside_evidence,
    fit_sigma_scale,
    level_spread,
    scale_spread,
)
from inference_worker.science.datasets import Dataset
from inference_worker.science.files import staged_folder
from inference_worker.science.known_captures import FEW_CAPTURES
from inference_worker.science.stress import FAR_OUTSIDE_M
from tools.evaluation_methods import outside_evidences
from tools.robustness_table import print_trade

FEW_INSIDE = 100
"""Captures inside the region, heard, below which the caution's threshold is not fitted again."""
CAUTION_SHARE = number(0.01, 0.99)
"""The argument type of ``--caution-share``."""


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


def levels(coverage: list[float]) -> str:
    return " / ".join(f"{100 * c:.1f}" for c in coverage)


RADII = ("levels", "single")
"""How the ellipses are fitted: level by level (the default), or one scale on the sigmas."""


def fit(
    d2: np.ndarray, source: str, radii: str = "levels", current: dict[float, float] | None = None
) -> tuple[float, dict[float, float], dict]:
    """The scale on the sigmas and the factors on the drawn ellipses' radii that make the
    ellipses hold their levels on ``d2`` (``current``: the model's factors now), with what they
    change and how far they would move on other captures of the same world (bootstrap, 5-95 %).
    Returns the scale, the radius factors by level (none with ``radii="single"``) and the record
    of the fit."""
    if radii == "single":
        factor, scales = fit_sigma_scale(d2), {}
        low, high = scale_spread(d2)
        spread: dict = {"factor_spread": [low, high]}
        fitted = f"scale x{factor:.4f} ({low:.3f}-{high:.3f})"
    else:
        found = fit_levels(d2)
        factor, scales = found.scale, found.radius_scales
        ranges = level_spread(d2)
        spread = {
            "factor_spread": list(ranges["scale"]),
            "radius_scale_spread": {k: list(v) for k, v in ranges.items() if k != "scale"},
        }
        fitted = (
            f"scale x{factor:.4f} ({ranges['scale'][0]:.3f}-{ranges['scale'][1]:.3f})"
            + "".join(
                f", {label(p)} % radii x{f:.3f} ({ranges[label(p)][0]:.3f}-{ranges[label(p)][1]:.3f})"
                for p, f in scales.items()
            )
        )
    before = coverage_at(d2, 1.0, radius_scales=current)
    after = coverage_at(d2, factor, radius_scales=scales)
    print(
        f"on {source} ({len(d2)} captures) the ellipses hold {levels(before)} % (39/68/95); "
        f"{fitted} -> {levels(after)} % (in brackets: 5-95 % over resamples of the captures)",
        flush=True,
    )
    if len(d2) < FEW_CAPTURES:
        print(
            f"warning: {len(d2)} captures measure coverage only roughly (under {FEW_CAPTURES}, "
            "the 95 % level is measured no better than ±1.5 points): record more if you can",
            flush=True,
        )
    info = {
        "captures": int(len(d2)),
        "radii": radii,
        "factor": factor,
        **spread,
        "coverage_before": before,
        "coverage_after": after,
    }
    return factor, scales, info


@overload
def caution_domain(domain: Domain, share: float | None) -> Domain: ...
@overload
def caution_domain(domain: Domain | None, share: float | None) -> Domain | None: ...
def caution_domain(domain: Domain | None, share: float | None) -> Domain | None:
    """``domain`` with the share its caution is to be fitted to, where one is given; a domain
    with no prior outside its region never cautions, and is said to have nothing to fit."""
    if share is None:
        return domain
    if domain is None or domain.outside_share <= 0.0:
        print(
            f"--caution-share {share:g}: the model records no prior outside its region, so its "
            "outside_region caution never fires; there is no threshold to fit",
            flush=True,
        )
        return domain
    return replace(domain, outside_caution_share=share)


def fit_caution(
    domain: Domain | None,
    evidence: np.ndarray,
    inside: np.ndarray,
    outside_m: np.ndarray | None = None,
) -> dict | None:
    """The ``outside_region`` threshold that cautions the domain's ``outside_caution_share`` of
    the calibration captures of emitters inside the region (``evidence``: each capture's Bayes
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
            f"{FEW_INSIDE}): too few to fit the threshold that marks "
            f"{100 * domain.outside_caution_share:g} % of them; it stays "
            f"{domain.outside_evidence:.3f}",
            flush=True,
        )
        return None
    share = domain.outside_caution_share
    threshold = fit_outside_evidence(values, share)
    old = domain.outside_evidence
    record: dict = {
        "share": share,
        "threshold": round(threshold, 4),
        "threshold_before": old,
        "inside_captures": int(len(values)),
        "inside_before": cautioned_share(values, old),
        "inside_after": cautioned_share(values, threshold),
    }
    text = (
        f"outside_region caution, fitted to mark {100 * share:g} % inside: threshold "
        f"{old:.3f} -> {threshold:.3f}; it marks "
        f"{100 * record['inside_before']:.1f} -> {100 * record['inside_after']:.1f} % of the "
        f"{len(values)} captures inside the region"
    )
    if outside_m is not None:
        far = evidence[heard & (outside_m > FAR_OUTSIDE_M)]
        if len(far):
            record["far_outside_captures"] = int(len(far))
            record["far_outside_before"] = cautioned_share(far, old)
            record["far_outside_after"] = cautioned_share(far, threshold)
            text += (
                f", {100 * record['far_outside_before']:.1f} -> "
                f"{100 * record['far_outside_after']:.1f} % of the {len(far)} more than 20 km "
                "outside"
            )
    print(text, flush=True)
    if "far_outside_captures" in record:  # what other lines would trade on these captures
        own = (old, record["inside_before"], record["far_outside_before"])
        print_trade((caution_trade(values, far), own), inside="captures inside")
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
    caution: dict | None = None,
) -> str:
    """Multiply the model's sigma scale by ``factor`` in its ONNX graph and ``model.json``, and
    set its drawn ellipses' radius factors (none: drawn from the sigmas alone) and, where given,
    its domain's ``outside_region`` threshold and the share it was fitted to (``caution``, as
    :func:`fit_caution` returns it); with ``relabel``, give it a version of its own
    (``version``, else :func:`calibrated_version`) so that results, job records and the result
    cache never mix it with the model it was made from. Returns the version written."""
    with staged_folder(model_dir, copy=True) as work:  # the old model stays whole until done
        return _write_scale(work, factor, calibration, radius_scales, relabel, version, caution)


def _write_scale(
    model_dir: Path,
    factor: float,
    calibration: dict,
    radius_scales: dict[float, float] | None,
    relabel: bool,
    version: str | None,
    caution: dict | None,
) -> str:
    metadata_path = model_dir / "model.json"
    metadata = json.loads(metadata_path.read_text())
    if caution is not None and metadata.get("domain"):
        metadata["domain"]["outside_evidence"] = round(float(caution["threshold"]), 4)
        metadata["domain"]["outside_caution_share"] = float(caution["share"])
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
