"""Evaluate a localization model on held-out simulated captures, against classical baselines.

Emitters are drawn only in spatial cells never used for training. For every capture the model
runs through the service's own path (features, onnxruntime, output decoding); on the same
captures the tool runs a maximum-likelihood grid search over received power (under the
simulator's own propagation model), the full grid posterior (mean and covariance) and a
power-weighted centroid, and computes the Cramér-Rao bound at the true positions. Rows per
sample rate and per capture length show the model holds across them.

A robustness table follows: each stress condition of :mod:`inference_worker.science.stress`
alone (emitters outside the region, other propagation, oscillator errors, a wider transmit-power
range, overloaded receivers, interference), with the model's error and coverage, the grid
posterior given the same conditions, the box centre as a floor, and how often each capture's
quality block says it is out of the model's domain.

Writes a Markdown report and figures (error CDF, calibration curve, map) and records the
figures in the model's metadata (``metrics``; the ONNX file and its sha256 are unchanged).

    pip install -e '.[train]'
    python tools/evaluate_model.py [--model inference_worker/models/reference]
        [--network my-network.json] [--per-cell 500] [--per-condition 400]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inference_worker.core.domain import assess  # noqa: E402
from inference_worker.core.ellipse import decode_output  # noqa: E402
from inference_worker.core.features import BandReport  # noqa: E402
from inference_worker.science.baselines import (  # noqa: E402
    GridLocator,
    crb_position_m,
    weighted_centroid,
)
from inference_worker.science.datasets import (  # noqa: E402
    Dataset,
    DatasetSpec,
    concatenate,
    generate,
)
from inference_worker.science.metrics import (  # noqa: E402
    coverage,
    error_summary,
    gaussian_nll_km,
)
from inference_worker.science.network import RECEIVERS_FILE, Network  # noqa: E402
from inference_worker.science.simulator import CaptureSimulator  # noqa: E402
from inference_worker.science.stress import CONDITIONS, Condition  # noqa: E402
from inference_worker.serving.onnx_model import LocalizationModel  # noqa: E402
from tools.evaluation_report import (  # noqa: E402
    Method,
    passes,
    plot,
    stress_passes,
    write_report,
)
from tools.requirements import keep_freed_memory, network_or_exit, require  # noqa: E402

DEFAULT_MODEL = ROOT / "inference_worker" / "models" / "reference"
DEFAULT_REPORT = ROOT / "docs" / "evaluation"
RATES = (12_000.0, 48_000.0, 192_000.0)
DURATIONS = (0.1, 0.25, 0.5, 1.0)
STRESS_RATES = (48_000.0,)
STRESS_DURATIONS = (0.3, 1.0)
FAR_OUTSIDE_M = 20_000.0


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
    network: Network, per_duration: int, durations=DURATIONS, rate: float = 12_000.0
) -> dict[float, float]:
    """Spread of measured power around the true mean received power, per capture length.

    Measured on captures from the training cells: the baselines' likelihood then uses
    σ² = σ_shadowing² + σ_measurement², i.e. the simulator's own model of the data.
    """
    sigmas = {}
    for duration in durations:
        spec = DatasetSpec(
            seed=77,
            count=per_duration,
            rates_hz=(rate,),
            rate_weights=None,
            durations_s=(duration,),
            continuous_duration=False,
            held_out=False,
            network=network,
        )
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


def quality_flags(model: LocalizationModel, data: Dataset, params) -> tuple[np.ndarray, np.ndarray]:
    """Per capture: out of the model's domain (any reason), and flagged ``outside_region`` (a
    caution)."""
    out_of_domain, outside = [], []
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
    return np.asarray(out_of_domain), np.asarray(outside)


def robustness(
    model: LocalizationModel,
    network: Network,
    simulator: CaptureSimulator,
    raw_params,
    args: argparse.Namespace,
    conditions: tuple[Condition, ...] = CONDITIONS,
) -> dict[str, dict]:
    """The robustness table: each stress condition alone, the model against the grid posterior
    that knows the condition, the box centre, coverage and the quality block's flags."""
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
        out_of_domain, outside_flag = quality_flags(model, data, raw_params)
        far = data.outside_m > FAR_OUTSIDE_M
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
        }
        elapsed = time.monotonic() - started
        left = elapsed / (index + 1) * (len(conditions) - index - 1)
        print(
            f"  condition {index + 1}/{len(conditions)} {condition.name}: {len(truth)} captures "
            f"({elapsed:.0f} s; about {left:.0f} s left)",
            flush=True,
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument(
        "--network", type=Path, default=RECEIVERS_FILE, help="the model's network file"
    )
    parser.add_argument("--per-cell", type=int, default=500, help="captures per rate and length")
    parser.add_argument(
        "--per-condition", type=int, default=400, help="captures per stress condition"
    )
    parser.add_argument(
        "--worlds",
        type=int,
        default=4,
        help="simulated terrains to evaluate in, none seen in training",
    )
    parser.add_argument("--seed", type=int, default=2027)
    parser.add_argument("--report", type=Path, default=DEFAULT_REPORT)
    parser.add_argument("--no-record", action="store_true", help="leave model.json unchanged")
    args = parser.parse_args()
    keep_freed_memory()
    require("matplotlib", "train", "drawing the report's figures")  # checked before minutes of work
    network = network_or_exit(args.network)

    started = time.monotonic()
    simulator = CaptureSimulator.of(network)
    model = LocalizationModel(args.model)
    if model.metadata.receiver_ids != tuple(r.id for r in network.receivers):
        print(
            f"error: the model serves {', '.join(model.metadata.receiver_ids)}, the network file "
            f"{args.network} has {', '.join(r.id for r in network.receivers)}: pass the model's "
            "network with --network",
            file=sys.stderr,
        )
        return 2
    raw_params = replace(model.metadata.features, mean_db=0.0, std_db=1.0)
    captures = args.per_cell * len(RATES) * len(DURATIONS) + args.per_condition * len(CONDITIONS)
    print(
        f"model {model.metadata.name} {model.version} ({args.model}); {captures} captures to "
        "simulate; about 1 min per 4 000 on 2 cores, then the baselines"
    )

    parts, world_of = [], []
    cells = [(rate, duration) for rate in RATES for duration in DURATIONS]
    worlds = [simulator.config.environment_seed + w for w in range(args.worlds)]
    per_world = args.per_cell // args.worlds
    for w, world in enumerate(worlds):
        for index, (rate, duration) in enumerate(cells):
            spec = DatasetSpec(
                seed=args.seed * 1000 + w * 100 + index,
                count=per_world,
                rates_hz=(rate,),
                rate_weights=None,
                durations_s=(duration,),
                continuous_duration=False,
                held_out=True,
                environment_seed=world,
                feature_dtype="float32",
                network=network,
                features=raw_params,
            )
            parts.append(generate(spec, processes=2))
            world_of += [w] * per_world
        elapsed = time.monotonic() - started
        # then the baselines, the model and the stress conditions take about four terrains' time
        left = elapsed / (w + 1) * (len(worlds) - w - 1 + 4)
        print(
            f"  simulated terrain {w + 1}/{len(worlds)}: {per_world} captures in each of "
            f"{len(cells)} rate × length cells ({elapsed:.0f} s; about {left:.0f} s left)",
            flush=True,
        )
    data = concatenate(parts)
    truth = data.truth_m
    world_index = np.asarray(world_of)

    print("calibrating the baselines' measurement spread per capture length")
    fading = fading_sigma_by_duration(network, 600)
    shadow = simulator.config.shadowing_sigma_db
    sigma_db = np.array([np.hypot(shadow, fading[float(d)]) for d in np.round(data.duration_s, 3)])
    print("  " + ", ".join(f"{d:g} s: {s:.2f} dB" for d, s in fading.items()))

    print("running the model and the baselines", flush=True)
    grid = GridLocator(simulator)
    grid_estimates = grid.locate(data.power_dbm, sigma_db)
    methods = {
        "model": run_model(model, data, simulator),
        "grid posterior": Method("grid posterior", grid_estimates.mean, grid_estimates.covariance),
        "ML grid": Method("ML grid", grid_estimates.ml, None),
        "centroid": Method("centroid", weighted_centroid(simulator, data.power_dbm), None),
        "box centre": box_centre(simulator, len(truth)),
    }
    out_of_domain, _ = quality_flags(model, data, raw_params)
    crb_m = crb_position_m(simulator, truth, sigma_db)
    crb = {
        "median_km": float(np.median(crb_m) / 1e3),
        "p10_km": float(np.percentile(crb_m, 10) / 1e3),
    }

    selections = {"all": np.ones(len(truth), bool)}
    selections.update({f"{rate / 1e3:g} kHz": data.rate_hz == rate for rate in RATES})
    selections.update(
        {f"{duration:g} s": np.isclose(data.duration_s, duration) for duration in DURATIONS}
    )
    selections.update({f"terrain {w + 1}": world_index == w for w in range(len(worlds))})
    groups = {}
    for group, mask in selections.items():
        groups[group] = {
            name: summarize(
                Method(
                    name,
                    m.means[mask],
                    None if m.covariances is None else m.covariances[mask],
                    m.radius_scales,
                ),
                truth[mask],
            )
            for name, m in methods.items()
        }

    all_pass = True
    print(
        f"\n{'rows':<10} {'median km':>9} {'post km':>7} {'ratio':>6} {'cov39':>6} {'cov68':>6} {'cov95':>6}  bar"
    )
    for group, rows in groups.items():
        ok, ratio = passes(rows["model"], rows["grid posterior"])
        if not group.startswith("terrain"):  # terrain rows show the spread; the bar is on the rest
            all_pass &= ok
        print(
            f"{group:<10} {rows['model']['median_km']:9.2f} {rows['grid posterior']['median_km']:7.2f} "
            f"{ratio:6.3f} {rows['model']['coverage_39']:6.3f} {rows['model']['coverage_68']:6.3f} "
            f"{rows['model']['coverage_95']:6.3f}  {'pass' if ok else 'FAIL'}"
        )
    print(f"Cramér–Rao bound: median {crb['median_km']:.1f} km")
    print(
        f"quality block: {100 * out_of_domain.mean():.1f} % of these in-distribution captures flagged out of domain"
    )

    print("robustness: each stress condition alone", flush=True)
    stress = robustness(model, network, simulator, raw_params, args)
    print(
        f"\n{'condition':<13} {'median km':>9} {'post km':>7} {'ratio':>6} {'cov68':>6} {'cov95':>6} {'ood':>6} {'far':>6}  bar"
    )
    for name, row in stress.items():
        far = row["outside_flagged_far"]
        print(
            f"{name:<13} {row['model']['median_km']:9.2f} {row['grid posterior']['median_km']:7.2f} "
            f"{row['model']['median_km'] / row['grid posterior']['median_km']:6.3f} "
            f"{row['model']['coverage_68']:6.3f} {row['model']['coverage_95']:6.3f} "
            f"{row['out_of_domain']:6.3f} {'—' if far is None else f'{far:6.3f}'}  "
            f"{'pass' if stress_passes(row) else 'FAIL'}"
        )
    stress_pass = all(stress_passes(row) for row in stress.values())

    args.report.mkdir(parents=True, exist_ok=True)
    figures = plot(args.report, methods, truth, model, simulator, data)
    seconds = time.monotonic() - started
    write_report(
        args.report / "README.md",
        model,
        groups,
        crb,
        figures,
        seconds,
        args,
        stress,
        float(out_of_domain.mean()),
        (len(RATES), len(DURATIONS)),
    )
    print(f"report: {args.report / 'README.md'} with {', '.join(figures)}")

    if not args.no_record:
        path = args.model / "model.json"
        metadata = json.loads(path.read_text())
        metadata["metrics"] = {
            "evaluation": {
                "held_out": "emitters in 1 km cells never used for training, in terrains never seen in training",
                "terrains": args.worlds,
                "per_cell": args.per_cell,
                "seed": args.seed,
                "rows": {
                    group: {
                        "model": rows["model"],
                        "grid_posterior": rows["grid posterior"],
                        "ml_grid": rows["ML grid"],
                        "box_centre": rows["box centre"],
                    }
                    for group, rows in groups.items()
                },
                "cramer_rao_median_km": crb["median_km"],
                "out_of_domain_share": float(out_of_domain.mean()),
                "passes_bar": all_pass,
            },
            "robustness": {
                "per_condition": args.per_condition,
                "rows": stress,
                "passes_bar": stress_pass,
            },
        }
        path.write_text(json.dumps(metadata, indent=2) + "\n")
        print(f"recorded the figures in {path}")
    print(
        f"in-distribution bar: {'pass' if all_pass else 'FAIL'}; robustness bar: {'pass' if stress_pass else 'FAIL'}"
    )
    return 0 if all_pass and stress_pass else 1


if __name__ == "__main__":
    raise SystemExit(main())
