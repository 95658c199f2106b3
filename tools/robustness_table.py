"""The evaluation's robustness table: each stress condition of
:mod:`inference_worker.science.stress` alone, the model against the grid posterior that knows
the condition, the box centre, coverage, and how often the quality block flags the captures."""

from __future__ import annotations

import argparse
import time

import numpy as np

from inference_worker.science.baselines import GridLocator
from inference_worker.science.calibration import Trades, caution_trade, cautioned_share
from inference_worker.science.datasets import DatasetSpec, generate
from inference_worker.science.network import Network
from inference_worker.science.simulator import CaptureSimulator
from inference_worker.science.stress import CONDITIONS, FAR_OUTSIDE_M, Condition
from inference_worker.serving.onnx_model import LocalizationModel
from tools.evaluation_methods import (
    box_centre,
    fading_sigma_by_duration,
    quality_flags,
    run_model,
    summarize,
)
from tools.evaluation_report import Method, stress_passes, trade_rows

STRESS_RATES = (48_000.0,)
STRESS_DURATIONS = (0.3, 1.0)


def robustness(
    model: LocalizationModel,
    network: Network,
    simulator: CaptureSimulator,
    raw_params,
    args: argparse.Namespace,
    conditions: tuple[Condition, ...] = CONDITIONS,
    evidence: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> dict[str, dict]:
    """The robustness table: each stress condition alone, the model against the grid posterior
    that knows the condition, the box centre, coverage and the quality block's flags. With
    ``evidence``, each condition's Bayes factors of the ``outside_region`` caution and its
    emitters' distances outside the region are kept there too (see :func:`outside_trade`)."""
    started = time.monotonic()
    fading = fading_sigma_by_duration(network, 300, STRESS_DURATIONS, STRESS_RATES[0])
    rows: dict[str, dict] = {}
    west, east, south, north = simulator.region_local()
    for index, condition in enumerate(conditions):
        grown = (east - west + 2 * condition.grow_m) * (north - south + 2 * condition.grow_m)
        config = condition.config(simulator.config, (east - west) * (north - south) / grown)
        spec = DatasetSpec(
            seed=args.seed * 7 + index,
            count=args.per_condition,
            rates_hz=STRESS_RATES,
            rate_weights=None,
            durations_s=STRESS_DURATIONS,
            continuous_duration=False,
            held_out=True,
            feature_dtype="float32",
            network=network,
            config=config,
            features=raw_params,
            baseline_band_hz=condition.baseline_band_hz,
        )
        data = generate(spec, processes=2)
        truth = data.truth_m
        stressed = simulator.with_config(config)
        sigma_db = np.array(
            [
                np.hypot(config.shadowing_sigma_db, fading[float(d)])
                for d in np.round(data.duration_s, 1)
            ]
        )
        grid = GridLocator(
            stressed, spacing_m=1_000.0 if condition.grow_m else 500.0, grow_m=condition.grow_m
        )
        estimates = grid.locate(data.power_dbm, sigma_db)
        out_of_domain, outside_flag, factors = quality_flags(model, data, raw_params)
        if evidence is not None:
            evidence[condition.name] = (factors, data.outside_m)
        far = data.outside_m > FAR_OUTSIDE_M
        inside = data.outside_m <= 0
        rows[condition.name] = {
            "description": condition.description,
            "model": summarize(run_model(model, data, simulator), truth),
            "grid posterior": summarize(
                Method("grid posterior", estimates.mean, estimates.covariance), truth
            ),
            "box centre": summarize(box_centre(simulator, len(truth)), truth),
            "out_of_domain": float(out_of_domain.mean()),
            "outside_flagged_far": float(outside_flag[far].mean()) if far.any() else None,
            "far_count": int(far.sum()),
            "outside_flagged_inside": float(outside_flag[inside].mean()) if inside.any() else None,
        }
        elapsed = time.monotonic() - started
        left = elapsed / (index + 1) * (len(conditions) - index - 1)
        print(
            f"  condition {index + 1}/{len(conditions)} {condition.name}: {len(truth)} captures "
            f"({elapsed:.0f} s; about {left:.0f} s left)",
            flush=True,
        )
    return rows


def print_table(stress: dict[str, dict]) -> None:
    """One line per condition: the model's median error against the grid posterior's, its
    coverage, the out-of-domain rate, the ``outside_region`` caution's rates far outside and
    inside the region, and the bar."""
    print(
        f"\n{'condition':<13} {'median km':>9} {'post km':>7} {'ratio':>6} {'cov68':>6} {'cov95':>6} {'ood':>6} {'far':>6} {'in':>6}  bar"
    )
    for name, row in stress.items():
        far, inside = row["outside_flagged_far"], row.get("outside_flagged_inside")
        print(
            f"{name:<13} {row['model']['median_km']:9.2f} {row['grid posterior']['median_km']:7.2f} "
            f"{row['model']['median_km'] / row['grid posterior']['median_km']:6.3f} "
            f"{row['model']['coverage_68']:6.3f} {row['model']['coverage_95']:6.3f} "
            f"{row['out_of_domain']:6.3f} {'—' if far is None else f'{far:6.3f}'} "
            f"{'—' if inside is None else f'{inside:6.3f}'}  "
            f"{'pass' if stress_passes(row) else 'FAIL'}"
        )


def outside_trade(
    evidence: dict[str, tuple[np.ndarray, np.ndarray]], threshold: float
) -> Trades | None:
    """What other lines on the ``outside_region`` Bayes factor would trade (a result carries
    its factor, so a client may draw its own), on the nominal condition's emitters inside and
    the outside condition's emitters more than ``FAR_OUTSIDE_M`` out; and the model's own ``threshold``'s
    line. None without both conditions, or where nothing inside is heard or nothing lies far."""
    if "nominal" not in evidence or "outside" not in evidence:
        return None
    factors, outside_m = evidence["nominal"]
    inside = factors[outside_m <= 0]
    factors, outside_m = evidence["outside"]
    far = factors[outside_m > FAR_OUTSIDE_M]
    if not np.isfinite(inside).any() or far.size == 0:
        return None
    own = (threshold, cautioned_share(inside, threshold), cautioned_share(far, threshold))
    return caution_trade(inside, far), own


def print_trade(trade: Trades | None, inside: str = "nominal emitters inside") -> None:
    """The lines of a trade, one a line; ``inside``: what the first share counts."""
    if trade is None:
        return
    print(
        "the caution at other lines (a threshold of a client's own on each result's "
        f"outside_evidence): {inside} / more than {FAR_OUTSIDE_M / 1e3:g} km outside cautioned"
    )
    for threshold, share_inside, share_far, own in trade_rows(trade):
        mark = "  (the model's)" if own else ""
        print(
            f"  threshold {threshold:.4f}: {100 * share_inside:5.1f} % / {100 * share_far:5.1f} %"
            f"{mark}"
        )
