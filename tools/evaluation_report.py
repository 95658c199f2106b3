"""What the model evaluation reports: its bars, the Markdown report and its figures.

Split from ``tools/evaluate_model.py`` (which simulates, runs the model and the baselines) so
each reads as one idea; the evaluation imports this module, never the reverse.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inference_worker.core.domain import Domain
from inference_worker.core.ellipse import Estimate, describe
from inference_worker.science.calibration import COVERAGE_TOLERANCES, Trades
from inference_worker.science.datasets import Dataset
from inference_worker.science.metrics import calibration_curve, coverage
from inference_worker.science.simulator import CaptureSimulator
from inference_worker.science.stress import FAR_OUTSIDE_M
from inference_worker.serving.onnx_model import LocalizationModel

ROOT = Path(__file__).resolve().parents[1]
MEDIAN_RATIO_BAR = 1.05
"""Model median error over the grid posterior's (Bayes under the simulator's own model)."""
COVERAGE_BARS = COVERAGE_TOLERANCES
STRESS_BARS = {0.6827: 0.60, 0.95: 0.90}
"""Least coverage under each stress condition: ellipses may widen, not lie."""
FAR_KM = FAR_OUTSIDE_M / 1e3
"""How far outside the region an emitter is "far" (the caution's yardstick), in km."""


@dataclass
class Method:
    name: str
    means: np.ndarray  # (n, 2) east/north m
    covariances: np.ndarray | None  # (n, 2, 2) or None when the method states no uncertainty
    radius_scales: dict[float, float] | None = None  # a model's per-level ellipse factors


def passes(model_row: dict, posterior_row: dict) -> tuple[bool, float]:
    """The in-distribution bar: median within ``MEDIAN_RATIO_BAR`` of the grid posterior's and
    every ellipse holding its level within ``COVERAGE_BARS``."""
    ratio = model_row["median_km"] / posterior_row["median_km"]
    ok = ratio <= MEDIAN_RATIO_BAR
    ok &= abs(model_row["coverage_39"] - 0.3935) <= COVERAGE_BARS[0.3935]
    ok &= abs(model_row["coverage_68"] - 0.6827) <= COVERAGE_BARS[0.6827]
    ok &= abs(model_row["coverage_95"] - 0.95) <= COVERAGE_BARS[0.95]
    return bool(ok), ratio


def shown(path: Path) -> str:
    """A path as a reader of the report would type it: relative to the project when inside."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def pct(row: dict, key: str) -> str:
    return f"{100 * row[key]:.1f}" if key in row else "—"


def write_report(
    path: Path,
    model: LocalizationModel,
    groups: dict,
    crb: dict,
    figures: list[str],
    seconds: float,
    args: argparse.Namespace,
    stress: dict[str, dict],
    out_of_domain: float,
    cells: tuple[int, int],
    trade: Trades | None = None,
) -> None:
    """The Markdown report; ``cells``: how many sample rates and capture lengths were crossed."""
    meta = model.metadata
    lines = [
        f"# Evaluation of {meta.name} {meta.version}",
        "",
        "Held-out simulated captures: emitters only in 1 km cells never used in training, in "
        f"{args.worlds} simulated terrains (spatially correlated shadowing fields), none of which "
        f"training saw; {args.per_cell} captures for each of {cells[0]} sample rates × "
        f"{cells[1]} lengths, spread evenly over the terrains (seed {args.seed}). "
        "One terrain's shadowing is correlated over ~500 m, so a single terrain is a small sample "
        "of what the model meets; the terrain rows show how much the figures move from one to "
        "another (the bar applies to the other rows). Errors are great-circle distances to the true position in **kilometres**. "
        "Coverage: share of true positions inside the ellipse of that confidence (39.35 %, 68.27 %, 95 %). "
        "NLL: mean Gaussian negative log-likelihood (per km²). Bar: model median ≤ "
        f"{MEDIAN_RATIO_BAR:.2f} × the grid posterior's (the Bayesian locator under the "
        "simulator's own model: the right yardstick; the ML grid is 7-13 % worse than it, so a "
        "ratio against ML flatters), 39 % coverage within ±3 points, 68 % within ±2, 95 % within ±1.5.",
        "",
        "| rows | method | median km | mean km | p90 km | cov 39 % | cov 68 % | cov 95 % | NLL | model / posterior | bar |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    for group, rows in groups.items():
        ok, ratio = passes(rows["model"], rows["grid posterior"])
        for name, row in rows.items():
            mark = ("pass" if ok else "**FAIL**") if name == "model" else ""
            if group.startswith("terrain") and name == "model":
                mark = "spread"
            ratio_text = f"{ratio:.3f}" if name == "model" else ""
            lines.append(
                f"| {group} | {name} | {fmt(row['median_km'], 2)} | {fmt(row['mean_km'], 2)} | "
                f"{fmt(row['p90_km'], 2)} | {pct(row, 'coverage_39')} | {pct(row, 'coverage_68')} | "
                f"{pct(row, 'coverage_95')} | {fmt(row.get('nll'), 2)} | {ratio_text} | {mark} |"
            )
    lines += [
        "",
        f"Cramér–Rao bound at the test positions (RMS position error, unbiased estimators, no "
        f"prior): median {crb['median_km']:.1f} km, 10th percentile {crb['p10_km']:.1f} km. "
        "It exceeds the observed errors because it ignores what every method here uses: the "
        "region emitters come from and the range of transmit powers. Three received powers "
        "with an unknown transmit power leave two independent power differences for two "
        "coordinates, each blurred by ~6 dB of shadowing: that is why errors are kilometres, "
        "not metres.",
        "",
        "Methods: **model** — the ONNX model through the service's feature and decoding code; "
        "**ML grid** — maximum likelihood over a 500 m grid of the received powers under the "
        "simulator's own propagation model (transmit power profiled out within its range); "
        "**grid posterior** — mean and covariance of the same likelihood with uniform priors; "
        "**centroid** — receiver sites weighted by linear received power (no uncertainty); "
        "**box centre** — the region's centre, every time.",
        "",
        f"Quality block: {100 * out_of_domain:.1f} % of these in-distribution captures are flagged "
        "out of the model's domain (the weak `outside_region` evidence is a caution, not "
        "counted here).",
        "",
        *robustness_lines(stress, args),
        *caution_lines(meta.domain),
        *trade_lines(trade, stress.get("outside", {}).get("far_count")),
        "",
        *[f"![{name}]({name})" for name in figures],
        "",
        f"Produced by `python tools/evaluate_model.py --model {shown(args.model)} "
        f"--network {shown(args.network)} "
        f"--per-cell {args.per_cell} --per-condition {args.per_condition} --worlds {args.worlds} --seed {args.seed}` "
        f"in {seconds / 60:.1f} min.",
        "",
    ]
    path.write_text("\n".join(lines))


def _save(fig, ax, path: Path) -> str:
    """Grid, legend and layout of a chart, written to ``path``; returns its file name."""
    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def plot(
    report_dir: Path,
    methods: dict[str, Method],
    truth: np.ndarray,
    model: LocalizationModel,
    simulator: CaptureSimulator,
    data: Dataset,
) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, method in methods.items():
        errors = np.sort(np.hypot(*(method.means - truth).T) / 1e3)
        ax.plot(errors, np.arange(1, len(errors) + 1) / len(errors), label=name)
    ax.set_xlabel("position error (km)")
    ax.set_ylabel("share of captures")
    ax.set_title("Error CDF on held-out captures")
    ax.set_xlim(0, np.percentile(np.hypot(*(methods["centroid"].means - truth).T) / 1e3, 99))
    names.append(_save(fig, ax, report_dir / "error_cdf.png"))

    levels = np.linspace(0.05, 0.99, 40)
    fig, ax = plt.subplots(figsize=(4.8, 4.6))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect")
    for name, method in methods.items():
        if method.covariances is not None:
            ax.plot(
                levels,
                calibration_curve(method.means, method.covariances, truth, levels),
                label=name,
            )
        if method.covariances is not None and method.radius_scales:  # calibrated level by level
            drawn = coverage(
                method.means,
                method.covariances,
                truth,
                tuple(method.radius_scales),
                method.radius_scales,
            )
            ax.scatter(list(drawn), list(drawn.values()), zorder=5, label=f"{name}, drawn ellipses")
    ax.set_xlabel("claimed confidence of the ellipse")
    ax.set_ylabel("observed share of truths inside")
    ax.set_title("Calibration")
    names.append(_save(fig, ax, report_dir / "calibration.png"))

    fig, ax = plt.subplots(figsize=(7.2, 5.6))
    south, north, west, east = simulator.region()
    ax.plot(
        [west, east, east, west, west], [south, south, north, north, south], color="grey", lw=0.8
    )
    rng = np.random.default_rng(3)
    chosen = rng.choice(len(truth), size=8, replace=False)
    colours = plt.cm.tab10(np.arange(len(chosen)))
    model_method = methods["model"]
    assert model_method.covariances is not None  # the model always has its ellipses
    for colour, index in zip(colours, chosen, strict=True):
        t_lat, t_lon = simulator.to_geo(*truth[index])
        e_lat, e_lon = simulator.to_geo(*model_method.means[index])
        cov = model_method.covariances[index]
        se, sn = np.sqrt(cov[0, 0]), np.sqrt(cov[1, 1])
        result = describe(
            Estimate(
                float(e_lat), float(e_lon), float(se), float(sn), float(cov[0, 1] / (se * sn))
            ),
            radius_scales=model_method.radius_scales,
        )
        ring = np.asarray(result["ellipses"]["95"]["polygon"]["coordinates"][0])
        ax.plot(ring[:, 0], ring[:, 1], color=colour, lw=1)
        ax.plot([t_lon, e_lon], [t_lat, e_lat], color=colour, lw=0.8, linestyle=":")
        ax.scatter([t_lon], [t_lat], color=colour, marker="x", s=40)
        ax.scatter([e_lon], [e_lat], color=colour, marker="o", s=18)
    for receiver in simulator.receivers:
        ax.scatter([receiver.lon], [receiver.lat], color="black", marker="^", s=70, zorder=5)
        ax.annotate(
            receiver.name, (receiver.lon, receiver.lat), textcoords="offset points", xytext=(5, 5)
        )
    ax.set_aspect(1.0 / np.cos(np.radians(simulator.origin[0])))
    ax.set_xlabel("longitude (°)")
    ax.set_ylabel("latitude (°)")
    ax.set_title("Receivers (▲), truths (×), estimates (●) and 95 % ellipses")
    fig.tight_layout()
    fig.savefig(report_dir / "map.png", dpi=110)
    names.append("map.png")
    plt.close(fig)
    return names


def stress_passes(row: dict) -> bool:
    model = row["model"]
    return model["coverage_68"] >= STRESS_BARS[0.6827] and model["coverage_95"] >= STRESS_BARS[0.95]


def robustness_lines(rows: dict[str, dict], args: argparse.Namespace) -> list[str]:
    lines = [
        "## Robustness: the world differing from the simulator",
        "",
        f"Each condition alone, {args.per_condition} held-out captures at 48 kHz (FM and CW, "
        "0.3 and 1 s). **grid posterior**: the Bayesian locator given the same conditions (true "
        "propagation, power range and region; powers measured over a band wide enough for the "
        "oscillators' errors) — the yardstick; **box centre**: the region's centre every time. "
        f"Bar: 95 % ellipses hold ≥ {100 * STRESS_BARS[0.95]:.0f} %, 68 % ellipses ≥ "
        f"{100 * STRESS_BARS[0.6827]:.0f} %. **out of domain**: captures whose quality block says "
        f"so (any reason); **far outside flagged**: emitters more than {FAR_KM:g} km outside the region "
        "whose quality block says `outside_region` (a caution); **inside cautioned**: emitters "
        "inside the region with that caution.",
        "",
        "| condition | model median km | grid posterior km | model / posterior | box centre km | cov 39 % | cov 68 % | cov 95 % | out of domain | far outside flagged | inside cautioned | bar |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    for name, row in rows.items():
        model, posterior = row["model"], row["grid posterior"]
        far = row["outside_flagged_far"]
        far_text = "—" if far is None else f"{100 * far:.1f} % of {row['far_count']}"
        inside = row.get("outside_flagged_inside")
        inside_text = "—" if inside is None else f"{100 * inside:.1f} %"
        lines.append(
            f"| {name}: {row['description']} | {model['median_km']:.2f} | {posterior['median_km']:.2f} | "
            f"{model['median_km'] / posterior['median_km']:.3f} | {row['box centre']['median_km']:.2f} | "
            f"{pct(model, 'coverage_39')} | {pct(model, 'coverage_68')} | {pct(model, 'coverage_95')} | "
            f"{100 * row['out_of_domain']:.1f} % | "
            f"{far_text} | {inside_text} | "
            f"{'pass' if stress_passes(row) else '**FAIL**'} |"
        )
    return lines


def caution_lines(domain: Domain | None) -> list[str]:
    """What the ``outside_region`` caution compared with, and the setting that moves it."""
    if domain is None or domain.outside_share <= 0.0:
        return []
    return ["", caution_text(domain)]


def caution_text(domain: Domain) -> str:
    return (
        f"The `outside_region` caution's threshold is {domain.outside_evidence:.3f} and its share "
        f"{domain.outside_caution_share:g}: the calibration tools fit the threshold to mark that "
        "share of the calibration's emitters inside the region (a model that records no "
        "threshold keeps 1.35), and `tools/recalibrate_model.py --caution-share S` fits it to "
        "another — a larger share marks more emitters far outside and more inside alike."
    )


def trade_rows(trade: Trades) -> list[tuple[float, float, float, bool]]:
    """The lines of a trade, strictest first (once each), each marked whether it is the
    model's own."""
    lines, own = trade
    return [(*line, line == own) for line in sorted({*lines, own}, reverse=True)]


def trade_lines(trade: Trades | None, far_count: int | None) -> list[str]:
    """The report's table of what other lines on the caution's Bayes factor trade."""
    if trade is None:
        return []
    rows = []
    for threshold, inside, far, own in trade_rows(trade):
        mark = " (the model's)" if own else ""
        rows.append(f"| {threshold:.4f}{mark} | {100 * inside:.1f} % | {100 * far:.1f} % |")
    return [
        "",
        "Each result carries the caution's Bayes factor (`outside_evidence`) beside the model's "
        "threshold (`outside_threshold`), so a client may draw a line of its own. What a line "
        "trades on these captures (the nominal condition's emitters, all inside, and the "
        f"outside condition's {far_count} emitters more than {FAR_KM:g} km out):",
        "",
        f"| threshold | nominal emitters inside cautioned | emitters > {FAR_KM:g} km outside cautioned |",
        "| ---: | ---: | ---: |",
        *rows,
    ]
