"""Fit a model's ellipses again, on captures of the world it should be calibrated for.

Either simulates calibration captures (never the evaluation's: other seeds, the training cells)
or reads the deployment's own captures of transmitters at known positions (``--captures``, a CSV
described in :mod:`inference_worker.science.known_captures`), runs the model through the
service's own feature and decoding code, and fits the ellipses so they hold their levels: by
default level by level (the sigma scale that makes the 1σ ellipse hold 39.35 %, and a factor on
the radii of each drawn ellipse, 68 % and 95 %, that makes it hold its level), or with
``--radii single`` one scale on the sigmas for all three. Writes the scale into the ONNX graph
(the constants that carry the current scale) and ``model.json`` (new sha256, the scale, the
radius factors, how they were fitted), and the threshold of the ``outside_region`` caution
fitted so that it marks a share of the captures of emitters inside the region (where at least
100 are): the model's own ``outside_caution_share``, a quarter unless ``--caution-share`` set
it. ``--check`` only reports how the ellipses hold on the captures and what would fit, writing
nothing.

    pip install -e '.[train]'
    python tools/recalibrate_model.py [--model inference_worker/models/reference]
        [--network inference_worker/data/receivers.json] [--world nominal|robust] [--count 3000]
        [--radii levels|single] [--caution-share 0.25]
    python tools/recalibrate_model.py --model DIR --captures known/captures.csv [--check]

About a minute on 2 cores for simulated captures; a few seconds per thousand known captures.
Then run tools/evaluate_model.py again.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.requirements import keep_freed_memory, network_or_exit, require, run  # noqa: E402

require("onnx", "train", "rewriting the ONNX graph")

from inference_worker.cli.arguments import count  # noqa: E402
from inference_worker.science.datasets import Dataset, DatasetSpec, concatenate, generate  # noqa: E402
from inference_worker.science.known_captures import (  # noqa: E402
    KnownCapturesError,
    load_known_captures,
)
from inference_worker.science.known_captures import (  # noqa: E402
    squared_distances as known_distances,
)
from inference_worker.science.metrics import mahalanobis_squared  # noqa: E402
from inference_worker.science.network import RECEIVERS_FILE  # noqa: E402
from inference_worker.science.simulator import CaptureSimulator  # noqa: E402
from inference_worker.science.world import World  # noqa: E402
from inference_worker.serving.onnx_model import LocalizationModel  # noqa: E402
from tools.evaluation_methods import DURATIONS, RATES, run_model  # noqa: E402
from tools.model_calibration import (  # noqa: E402
    CAUTION_SHARE,
    RADII,
    caution_domain,
    fit,
    fit_caution,
    fit_caution_on,
    write_scale,
)

DEFAULT_MODEL = ROOT / "inference_worker" / "models" / "reference"
CALIBRATION_SEED = 31_337
CALIBRATION_TERRAIN = 5_000
"""Seed of the first calibration terrain (the evaluation's terrains start at 2026)."""
TERRAINS = 4


def squared_distances(
    model: LocalizationModel, specs: list[DatasetSpec]
) -> tuple[np.ndarray, Dataset]:
    """Squared Mahalanobis distance of each calibration capture's truth under the model, and
    the captures."""
    started, parts = time.monotonic(), []
    for index, spec in enumerate(specs):
        parts.append(generate(spec, processes=2))
        if (index + 1) % 12 == 0 or index + 1 == len(specs):
            seconds = time.monotonic() - started
            left = seconds / (index + 1) * (len(specs) - index - 1)
            print(
                f"  calibration: {index + 1}/{len(specs)} sets ({seconds:.0f} s; ~{left:.0f} s left)",
                flush=True,
            )
    data = concatenate(parts)
    network = specs[0].network
    assert network is not None
    method = run_model(model, data, CaptureSimulator.of(network))
    assert method.covariances is not None
    return mahalanobis_squared(method.means, method.covariances, data.truth_m), data


def calibration_specs(network, features, world: str, count: int) -> list[DatasetSpec]:
    """Captures drawn as the evaluation draws them (each of its sample rates and lengths, in
    four fixed terrains), from other terrains, other seeds and the training cells."""
    cells = [(rate, duration) for rate in RATES for duration in DURATIONS]
    per_set = max(1, count // (TERRAINS * len(cells)))
    return [
        DatasetSpec.cell(
            CALIBRATION_SEED + terrain * 100 + index,
            per_set,
            rate,
            duration,
            held_out=False,
            environment_seed=CALIBRATION_TERRAIN + terrain,
            feature_dtype="float32",
            network=network,
            world=World() if world == "robust" else None,
            features=features,
        )
        for terrain in range(TERRAINS)
        for index, (rate, duration) in enumerate(cells)
    ]


def recalibrate(
    model_dir: Path,
    network,
    world: str,
    count: int,
    *,
    radii: str = "levels",
    relabel: bool = False,
    version: str | None = None,
    caution_share: float | None = None,
) -> float:
    """Fit the ellipses of the model in ``model_dir`` (``radii``: see :data:`RADII`) on
    ``count`` captures of the ``world`` (``nominal`` or ``robust``) and write them into its ONNX
    graph and metadata (relabelled as in :func:`write_scale`), with the caution's threshold
    (fitted to ``caution_share``, else the model's own share); returns the factor applied to
    the previous sigma scale."""
    model = LocalizationModel(model_dir)
    features = replace(model.metadata.features, mean_db=0.0, std_db=1.0)
    specs = calibration_specs(network, features, world, count)
    d2, data = squared_distances(model, specs)
    factor, scales, info = fit(
        d2, f"the simulated {world} world", radii, model.metadata.ellipse_radius_scales
    )
    caution = fit_caution_on(caution_domain(model.metadata.domain, caution_share), data, features)
    written = write_scale(
        model_dir,
        factor,
        {"world": world, "seed": CALIBRATION_SEED, **info, "outside_caution": caution},
        radius_scales=scales,
        relabel=relabel,
        version=version,
        caution=caution,
    )
    print(f"model version: {written}", flush=True)
    return factor


def recalibrate_on_known(
    model_dir: Path,
    captures_csv: Path,
    check: bool,
    version: str | None = None,
    radii: str = "levels",
    caution_share: float | None = None,
) -> float:
    """Fit the ellipses on the deployment's captures at known positions (and write them with a
    version of its own, unless ``check``); returns the factor on the sigma scale."""
    captures = load_known_captures(captures_csv)
    model = LocalizationModel(model_dir)
    print(f"{len(captures)} captures at known positions in {captures_csv}", flush=True)

    def progress(done: int, total: int, seconds: float) -> None:
        left = seconds / done * (total - done)
        print(f"  {done}/{total} located ({seconds:.0f} s; ~{left:.0f} s left)", flush=True)

    found = known_distances(model, captures, progress)
    print(
        f"median error {np.median(found.error_km):.2f} km; "
        f"{100 * found.out_of_domain.mean():.1f} % flagged out of the model's domain",
        flush=True,
    )
    factor, scales, info = fit(
        found.d2, str(captures_csv), radii, model.metadata.ellipse_radius_scales
    )
    caution = fit_caution(
        caution_domain(model.metadata.domain, caution_share),
        found.outside_evidence,
        found.outside_m <= 0,
        found.outside_m,
    )
    if not check:
        written = write_scale(
            model_dir,
            factor,
            {
                "world": "known captures",
                "file": str(captures_csv),
                **info,
                "outside_caution": caution,
            },
            radius_scales=scales,
            relabel=True,
            version=version,
            caution=caution,
        )
        print(f"model version: {written}", flush=True)
    return factor


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--network", type=Path, default=RECEIVERS_FILE)
    parser.add_argument(
        "--world",
        choices=("nominal", "robust"),
        default="nominal",
        help="the world the ellipses should hold their levels in (default: nominal)",
    )
    parser.add_argument("--count", type=count(1), default=9_600, help="calibration captures")
    parser.add_argument(
        "--radii",
        choices=RADII,
        default="levels",
        help="levels: the sigmas fitted to the 39 %% level and each drawn ellipse's radii to its "
        "own (default); single: one scale on the sigmas for all three levels",
    )
    parser.add_argument(
        "--captures",
        type=Path,
        help="calibrate on these captures at known positions (CSV) instead of simulating",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="with --captures: report how the ellipses hold and the scale that would fit; "
        "change nothing",
    )
    parser.add_argument(
        "--caution-share",
        type=CAUTION_SHARE,
        help="share of the emitters inside the region the outside_region caution is fitted to "
        "mark (default: the model's own, 0.25 unless set): more marks more emitters far "
        "outside, and more inside",
    )
    parser.add_argument(
        "--version",
        help="version label of the recalibrated model (default: its own with -cal. and the "
        "first 8 hex digits of its new sha256, so results and the result cache never mix it "
        "with the model it was made from)",
    )
    args = parser.parse_args()
    keep_freed_memory()
    if args.version is not None and not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", args.version):
        parser.error("--version: letters, digits, '.', '_' and '-' only, at most 64")
    if args.check and args.captures is None:
        parser.error("--check needs --captures")
    if args.captures is not None:
        started = time.monotonic()
        try:
            recalibrate_on_known(
                args.model,
                args.captures,
                args.check,
                args.version,
                args.radii,
                args.caution_share,
            )
        except KnownCapturesError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if not args.check:
            print(
                f"wrote {args.model / 'model.onnx'} and model.json in "
                f"{time.monotonic() - started:.0f} s; check it on other captures of the same "
                f"world: python tools/recalibrate_model.py --model {args.model} --captures "
                "OTHER.csv --check"
            )
        return 0
    network = network_or_exit(args.network)
    started = time.monotonic()
    recalibrate(
        args.model,
        network,
        args.world,
        args.count,
        radii=args.radii,
        relabel=True,
        version=args.version,
        caution_share=args.caution_share,
    )
    print(
        f"wrote {args.model / 'model.onnx'} and model.json in {time.monotonic() - started:.0f} s; "
        f"next: python tools/evaluate_model.py --model {args.model} --network {args.network}"
    )
    return 0


if __name__ == "__main__":
    run(main)
