"""What the evaluation runs on a set of simulated captures, shared by the evaluation, its
robustness table and the recalibration: the model through the service's own path, the box
centre, the baselines' measurement spread, each method's errors and coverage, and the quality
block's flags."""

from __future__ import annotations

import numpy as np

from inference_worker.core.domain import Domain, assess, capture_outside_evidence
from inference_worker.core.ellipse import decode_output
from inference_worker.core.features import BandReport
from inference_worker.science.datasets import Dataset, DatasetSpec, generate
from inference_worker.science.metrics import coverage, error_summary, gaussian_nll_km
from inference_worker.science.network import Network
from inference_worker.science.simulator import CaptureSimulator
from inference_worker.serving.onnx_model import LocalizationModel
from tools.evaluation_report import Method

RATES = (12_000.0, 48_000.0, 192_000.0)
"""The sample rates the evaluation draws its held-out captures at (the calibration too)."""
DURATIONS = (0.1, 0.25, 0.5, 1.0)
"""The capture lengths, in seconds, it draws them with."""


def run_model(model: LocalizationModel, data: Dataset, simulator: CaptureSimulator) -> Method:
    params = model.metadata.features
    means, covs = [], []
    for start in range(0, len(data.rate_hz), 256):
        raw = data.features_db[start : start + 256].astype(np.float32)
        output = model.predict(((raw - params.mean_db) / params.std_db).astype(np.float32))
        for row in output:
            estimate = decode_output(row, model.metadata.outputs)
            east, north = simulator.to_local(estimate.lat, estimate.lon)
            means.append((float(east), float(north)))
            covs.append(estimate.covariance())
    return Method(
        "model", np.asarray(means), np.asarray(covs), model.metadata.ellipse_radius_scales
    )


def fading_sigma_by_duration(
    network: Network, per_duration: int, durations: tuple[float, ...], rate: float = 12_000.0
) -> dict[float, float]:
    """Spread of measured power around the true mean received power, per capture length.

    Measured on captures from the training cells: the baselines' likelihood then uses
    σ² = σ_shadowing² + σ_measurement², i.e. the simulator's own model of the data.
    """
    sigmas = {}
    for duration in durations:
        spec = DatasetSpec.cell(77, per_duration, rate, duration, held_out=False, network=network)
        data = generate(spec, processes=2)
        sigmas[duration] = float(np.std(data.power_dbm - data.rx_power_dbm))
    return sigmas


def summarize(method: Method, truth: np.ndarray) -> dict:
    errors = error_summary(method.means, truth)
    row = {
        "count": errors.count,
        "median_km": errors.median_km,
        "mean_km": errors.mean_km,
        "p90_km": errors.p90_km,
    }
    if method.covariances is not None:
        cover = coverage(
            method.means, method.covariances, truth, radius_scales=method.radius_scales
        )
        row.update(
            {
                "coverage_39": cover[0.3935],
                "coverage_68": cover[0.6827],
                "coverage_95": cover[0.95],
                "nll": gaussian_nll_km(method.means, method.covariances, truth),
            }
        )
    return row


def box_centre(simulator: CaptureSimulator, count: int) -> Method:
    """The guess that knows only the region: its centre, every time."""
    west, east, south, north = simulator.region_local()
    return Method("box centre", np.tile([(west + east) / 2, (south + north) / 2], (count, 1)), None)


def quality_flags(
    model: LocalizationModel, data: Dataset, params
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per capture: out of the model's domain (any reason), flagged ``outside_region`` (a
    caution), and the Bayes factor that caution compared (NaN where nothing is heard or the
    model records no domain)."""
    out_of_domain, outside, factors = [], [], []
    ids = model.metadata.receiver_ids
    for i in range(len(data.rate_hz)):
        band = BandReport(
            data.carrier_hz[i], data.signal_hz[i], data.off_band[i], float(data.reach_hz[i])
        )
        block = assess(
            data.features_db[i], band, data.clipped[i], params, ids, model.metadata.domain
        )
        codes = {entry["code"] for entry in block["reasons"] + block["cautions"]}
        out_of_domain.append(block["in_domain"] is False)
        outside.append("outside_region" in codes)
        factor = block.get("outside_evidence")
        factors.append(np.nan if factor is None else factor)
    return np.asarray(out_of_domain), np.asarray(outside), np.asarray(factors, dtype=float)


def outside_evidences(domain: Domain, data: Dataset, params) -> np.ndarray:
    """Per capture: the Bayes factor the ``outside_region`` caution compares with the domain's
    threshold (NaN where no receiver hears a signal: such a capture is never cautioned)."""
    values = [capture_outside_evidence(f, params, domain) for f in data.features_db]
    return np.array([np.nan if v is None else v for v in values])
