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

from inference_worker.cli.arguments import count  # noqa: E402
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
from inference_worker.science.files import replace_text  # noqa: E402
from inference_worker.science.network import RECEIVERS_FILE, Network  # noqa: E402
from inference_worker.science.simulator import CaptureSimulator  # noqa: E402
from inference_worker.science.stress import CONDITIONS  # noqa: E402
from inference_worker.serving.onnx_model import LocalizationModel  # noqa: E402
from tools.evaluation_methods import (  # noqa: E402
    DURATIONS,
    RATES,
    box_centre,
    fading_sigma_by_duration,
    quality_flags,
    run_model,
    summarize,
)
from tools.evaluation_report import (  # noqa: E402
    Method,
    caution_lines,
    passes,
    plot,
    stress_passes,
    write_report,
)
from tools.requirements import keep_freed_memory, network_or_exit, require, run  # noqa: E402
from tools.robustness_table import outside_trade, print_table, print_trade, robustness  # noqa: E402

DEFAULT_MODEL = ROOT / "inference_worker" / "models" / "reference"
DEFAULT_REPORT = ROOT / "docs" / "evaluation"


def held_out_set(
    args: argparse.Namespace, network: Network, simulator: CaptureSimulator, raw_params
) -> tuple[Dataset, np.ndarray]:
    """Captures of emitters in held-out cells, in ``args.worlds`` terrains never seen in
    training, ``args.per_cell`` in each rate × length cell; with the terrain of each."""
    started = time.monotonic()
    parts, world_of = [], []
    cells = [(rate, duration) for rate in RATES for duration in DURATIONS]
    worlds = [simulator.config.environment_seed + w for w in range(args.worlds)]
    per_world = args.per_cell // args.worlds
    for w, world in enumerate(worlds):
        for index, (rate, duration) in enumerate(cells):
            spec = DatasetSpec.cell(
                args.seed * 1000 + w * 100 + index,
                per_world,
                rate,
                duration,
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
    return concatenate(parts), np.asarray(world_of)


def significant(value, digits: int = 6):
    """``value`` with every float rounded to ``digits`` significant digits: the figures keep more
    precision than the evaluation measures, and a run repeated on other threads (whose sums
    differ in the last bits) writes the same ``model.json``."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: significant(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [significant(v, digits) for v in value]
    return value


def record_metrics(
    args: argparse.Namespace,
    groups: dict,
    crb: dict,
    out_of_domain: np.ndarray,
    all_pass: bool,
    stress: dict,
    stress_pass: bool,
) -> None:
    """Write the figures into the model's ``model.json`` (``metrics``; the ONNX file and its
    sha256 are unchanged)."""
    path = args.model / "model.json"
    metadata = json.loads(path.read_text())
    metadata["metrics"] = significant(
        {
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
    )
    replace_text(path, json.dumps(metadata, indent=2) + "\n")  # a model.json is never half new
    print(f"recorded the figures in {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument(
        "--network", type=Path, default=RECEIVERS_FILE, help="the model's network file"
    )
    parser.add_argument(
        "--per-cell", type=count(1), default=500, help="captures per rate and length"
    )
    parser.add_argument(
        "--per-condition", type=count(1), default=400, help="captures per stress condition"
    )
    parser.add_argument(
        "--worlds",
        type=count(1),
        default=4,
        help="simulated terrains to evaluate in, none seen in training",
    )
    parser.add_argument("--seed", type=count(0), default=2027)
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

    data, world_index = held_out_set(args, network, simulator, raw_params)
    truth = data.truth_m

    print("calibrating the baselines' measurement spread per capture length")
    fading = fading_sigma_by_duration(network, 600, DURATIONS)
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
    out_of_domain, _, _ = quality_flags(model, data, raw_params)
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
    selections.update({f"terrain {w + 1}": world_index == w for w in range(args.worlds)})
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
    evidence: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    stress = robustness(model, network, simulator, raw_params, args, evidence=evidence)
    print_table(stress)
    for line in caution_lines(model.metadata.domain):
        print(line)
    domain = model.metadata.domain
    trade = None if domain is None else outside_trade(evidence, domain.outside_evidence)
    print_trade(trade)
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
        trade,
    )
    print(f"report: {args.report / 'README.md'} with {', '.join(figures)}")

    if not args.no_record:
        record_metrics(args, groups, crb, out_of_domain, all_pass, stress, stress_pass)
    print(
        f"in-distribution bar: {'pass' if all_pass else 'FAIL'}; robustness bar: {'pass' if stress_pass else 'FAIL'}"
    )
    return 0 if all_pass and stress_pass else 1


if __name__ == "__main__":
    run(main)
