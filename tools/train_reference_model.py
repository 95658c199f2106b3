"""Train the reference localization model on simulated captures and export it to ONNX.

The network (``tools/localization_net.py``) reads the (3, 128, 32) log-mel PSD features and
predicts a position and a 2-D Gaussian, trained with the Gaussian negative log-likelihood. After
training, one scale on the sigmas is fitted on a validation set so the 68 % and 95 % ellipses
hold what they claim, then the network is exported (``tools/model_export.py``) with the
service's contract ``(B, 3, 128, 32) -> (B, 5) = [lat°, lon°, σ_east m, σ_north m, ρ]``
and (``--calibrate nominal``, the default, after robust training) its ellipses are fitted again
on captures of the nominal world by ``tools/recalibrate_model.py``: level by level unless
``--radii single``.

Training draws each capture's world around the nominal simulator (``--world robust``, the
default): emitters outside the region, other path-loss exponents and shadowing, oscillator
errors up to ±50 ppm, overloaded receivers, interference; see ``World``. The model's domain
(network, region, Tx power range, band, propagation, and the ``outside_region`` caution's
threshold, fitted to mark a quarter of the calibration's emitters inside the region — or the
share ``--caution-share`` gives — on the nominal captures of the recalibration, or with
``--calibrate robust`` the validation set's) is written to ``model.json``.

Needs the ``train`` extra (PyTorch, CPU build):

    pip install -e '.[train]'
    python tools/train_reference_model.py [--network my-network.json --out var/models/mine]
        [--train 40000] [--epochs 16] [--seed 1]

About 25 minutes on a 2-core machine. Data sets are cached under var/datasets/.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.requirements import keep_freed_memory, network_or_exit, require, run  # noqa: E402

require("torch", "train", "training")
import torch  # noqa: E402
from torch import nn  # noqa: E402

from inference_worker.cli.arguments import count, number  # noqa: E402
from inference_worker.core.features import FeatureParams  # noqa: E402
from inference_worker.science.calibration import fit_sigma_scale  # noqa: E402
from inference_worker.science.datasets import (  # noqa: E402
    RAW_DB,
    Dataset,
    DatasetSpec,
    generate,
    print_progress,
)
from inference_worker.science.files import staged_folder  # noqa: E402
from inference_worker.science.metrics import (  # noqa: E402
    covariance_from_sigmas,
    coverage,
    error_summary,
    mahalanobis_squared,
)
from inference_worker.science.network import RECEIVERS_FILE  # noqa: E402
from inference_worker.science.simulator import CaptureSimulator  # noqa: E402
from inference_worker.science.world import World, domain_of  # noqa: E402
from tools.localization_net import LocalizationNet, ServiceContract, decode, gaussian_nll  # noqa: E402
from tools.model_calibration import CAUTION_SHARE, caution_domain, fit_caution_on  # noqa: E402
from tools.model_export import check_onnx_agrees, export  # noqa: E402

DEFAULT_OUT = ROOT / "inference_worker" / "models" / "reference"
CACHE_DIR = ROOT / "var" / "datasets"
MODEL_NAME = "heimdall-localization"
VERSION = "2.0.0"
TRAIN_RATES = (12_000.0, 24_000.0, 48_000.0, 96_000.0, 192_000.0)
TRAIN_RATE_WEIGHTS = (0.55, 0.15, 0.12, 0.08, 0.10)
TRAIN_DURATIONS = (0.1, 1.0)


# --- data ----------------------------------------------------------------------------------
def dataset(name: str, spec: DatasetSpec, use_cache: bool) -> Dataset:
    simulator = CaptureSimulator.of(spec.network) if spec.network else CaptureSimulator()
    key = hashlib.sha256(repr((spec, RAW_DB, simulator.config)).encode()).hexdigest()[:12]
    path = CACHE_DIR / f"{name}-{key}.npz"
    if use_cache and path.exists():
        print(f"{name}: {spec.count} captures from cache {path.relative_to(ROOT)}")
        return Dataset.load(str(path))
    print(f"{name}: simulating {spec.count} captures")
    data = generate(spec, processes=2, progress=print_progress(name))
    print(f"{name}: saving to {path.relative_to(ROOT)}", flush=True)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    data.save(str(path))
    return data


def batches(data: Dataset, params: FeatureParams, indices: np.ndarray, size: int):
    for start in range(0, len(indices), size):
        chosen = indices[start : start + size]
        features = (data.features_db[chosen].astype(np.float32) - params.mean_db) / params.std_db
        yield torch.from_numpy(features), torch.from_numpy(data.truth_m[chosen].astype(np.float32))


@torch.no_grad()
def predict(net: nn.Module, data: Dataset, params: FeatureParams) -> tuple[np.ndarray, ...]:
    net.eval()
    outputs = [decode(net(x)) for x, _ in batches(data, params, np.arange(len(data.rate_hz)), 512)]
    net.train()
    return tuple(torch.cat([o[i] for o in outputs]).numpy().astype(np.float64) for i in range(4))


def report(
    label: str, outputs: tuple[np.ndarray, ...], truth: np.ndarray, sigma_scale: float = 1.0
) -> dict:
    position, se, sn, rho = outputs
    cov = covariance_from_sigmas(se * sigma_scale, sn * sigma_scale, rho)
    errors = error_summary(position, truth)
    cover = coverage(position, cov, truth)
    print(
        f"  {label}: median {errors.median_km:.2f} km, mean {errors.mean_km:.2f} km, "
        f"p90 {errors.p90_km:.2f} km, coverage 68% {cover[0.6827]:.3f}, 95% {cover[0.95]:.3f}",
        flush=True,
    )
    return {"median_km": errors.median_km, "coverage_68": cover[0.6827], "coverage_95": cover[0.95]}


def fit_scale(outputs: tuple[np.ndarray, ...], truth: np.ndarray) -> float:
    """The sigma scale that brings the 39/68/95 % coverages closest to their levels."""
    position, se, sn, rho = outputs
    d2 = mahalanobis_squared(position, covariance_from_sigmas(se, sn, rho), truth)
    return fit_sigma_scale(d2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Refused here, not by PyTorch or numpy after minutes of simulating captures.
    parser.add_argument("--train", type=count(1), default=40_000, help="training captures")
    parser.add_argument("--validation", type=count(1), default=5_000, help="validation captures")
    parser.add_argument("--epochs", type=count(1), default=16)
    parser.add_argument("--batch", type=count(1), default=256)
    parser.add_argument("--lr", type=number(0.0, above=True), default=2e-3)
    parser.add_argument("--seed", type=count(0), default=1)
    parser.add_argument("--threads", type=count(1), default=2)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--network",
        type=Path,
        default=RECEIVERS_FILE,
        help="network file: 3 receivers (id, lat, lon, antenna_height_m, gain_offset_db) and "
        "an optional region (default: the packaged network)",
    )
    parser.add_argument(
        "--world",
        choices=("robust", "nominal"),
        default="robust",
        help="robust: train over a wider world than the nominal simulator (default)",
    )
    parser.add_argument(
        "--calibrate",
        choices=("nominal", "robust"),
        default="nominal",
        help="the world whose captures the sigma scale is fitted on at the end: nominal (the "
        "ellipses hold their levels where the model is used; default) or robust (the training "
        "world: wider ellipses)",
    )
    parser.add_argument(
        "--radii",
        choices=("levels", "single"),
        default="levels",
        help="how the final calibration fits the ellipses: levels (the sigmas to the 39 %% level, "
        "each drawn ellipse's radii to its own; default) or single (one scale on the sigmas)",
    )
    parser.add_argument(
        "--caution-share",
        type=CAUTION_SHARE,
        help="share of the emitters inside the region the outside_region caution is fitted to "
        "mark (default 0.25): more marks more emitters far outside, and more inside",
    )
    parser.add_argument("--name", default=MODEL_NAME, help="model name written to model.json")
    parser.add_argument("--version", default=VERSION, help="model version written to model.json")
    parser.add_argument("--no-cache", action="store_true", help="simulate data sets again")
    args = parser.parse_args()
    if args.out.exists() and not args.out.is_dir():  # said now, not after the training
        parser.error(f"--out {args.out} is not a folder")
    keep_freed_memory()
    network = network_or_exit(args.network)

    started = time.monotonic()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    simulator = CaptureSimulator.of(network)
    world = World() if args.world == "robust" else None
    print(
        f"network {network.name}: {', '.join(r.id for r in network.receivers)}; region "
        f"{', '.join(f'{v:.3f}' for v in simulator.region())} (S, N, W, E); world {args.world}"
    )
    common: dict[str, Any] = dict(
        network=network,
        world=world,
        rates_hz=TRAIN_RATES,
        rate_weights=TRAIN_RATE_WEIGHTS,
        durations_s=TRAIN_DURATIONS,
        continuous_duration=True,
        held_out=False,
        randomize_environment=True,
    )
    train = dataset(
        "train",
        DatasetSpec(seed=args.seed * 1000 + 1, count=args.train, **common),
        not args.no_cache,
    )
    val = dataset(
        "validation",
        DatasetSpec(seed=args.seed * 1000 + 2, count=args.validation, **common),
        not args.no_cache,
    )

    finite = train.features_db.astype(np.float32)
    params = replace(
        FeatureParams(),
        mean_db=round(float(finite.mean()), 3),
        std_db=round(float(finite.std()), 3),
    )
    del finite
    print(f"feature normalization: mean {params.mean_db} dB, std {params.std_db} dB")

    net = LocalizationNet(params)
    print(f"network: {sum(p.numel() for p in net.parameters())} parameters")
    steps_per_epoch = math.ceil(args.train / args.batch)
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.1
    )
    order_rng = np.random.default_rng(args.seed)
    for epoch in range(1, args.epochs + 1):
        epoch_started = time.monotonic()
        losses = []
        for x, y in batches(train, params, order_rng.permutation(args.train), args.batch):
            loss = gaussian_nll(net(x), y)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
        seconds = time.monotonic() - epoch_started
        left = seconds * (args.epochs - epoch)
        print(
            f"epoch {epoch}/{args.epochs}: train NLL {np.mean(losses):.3f}, {seconds:.0f} s, ~{left / 60:.1f} min left",
            flush=True,
        )
        if epoch % 4 == 0 or epoch == args.epochs:
            report("validation", predict(net, val, params), val.truth_m)

    outputs = predict(net, val, params)
    sigma_scale = fit_scale(outputs, val.truth_m)
    print(f"sigma scale fitted on validation: {sigma_scale:.4f}")
    validation = report("validation (calibrated)", outputs, val.truth_m, sigma_scale)

    contract = ServiceContract(net, simulator, sigma_scale)
    sample = next(batches(val, params, np.arange(min(256, len(val.rate_hz))), 256))[0]
    training = {
        "seed": args.seed,
        "train_captures": args.train,
        "validation_captures": args.validation,
        "epochs": args.epochs,
        "batch": args.batch,
        "learning_rate": args.lr,
        "sigma_scale": sigma_scale,
        "sample_rates_hz": list(TRAIN_RATES),
        "durations_s": list(TRAIN_DURATIONS),
        "network": str(args.network),
        "simulator": {k: v for k, v in asdict(simulator.config).items()},
        "world": world.to_metadata() if world else None,
        "validation": validation,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "minutes": round((time.monotonic() - started) / 60.0, 1),
    }
    domain = domain_of(simulator, world)
    domain = caution_domain(domain, args.caution_share)
    if args.calibrate == "robust" and world is not None:  # no recalibration below to fit it
        caution = fit_caution_on(domain, val, RAW_DB)
        if caution is not None:
            domain = replace(domain, outside_evidence=caution["threshold"])
            training["outside_caution"] = caution
    # Written beside --out and put in its place once checked and calibrated: a model there
    # (served from HEIMDALL_MODEL_DIR, say) stays whole if this run stops or fails.
    with staged_folder(args.out) as work:
        export(
            contract,
            work,
            params,
            simulator,
            sample,
            training,
            domain.to_metadata(),
            args.name,
            args.version,
        )
        difference = check_onnx_agrees(work, contract, sample, simulator)
        print(
            f"PyTorch vs onnxruntime on 256 inputs: position within {difference['position_m']:.2f} m, "
            f"sigmas within {difference['sigma_relative']:.1e} (relative), rho within {difference['rho']:.1e}"
        )
        if (
            difference["position_m"] > 1.0
            or difference["sigma_relative"] > 1e-4
            or difference["rho"] > 1e-4
        ):
            print("error: the exported model does not reproduce PyTorch", file=sys.stderr)
            raise SystemExit(1)  # nothing is written to --out
        if args.calibrate == "nominal" and world is not None:
            from tools.recalibrate_model import recalibrate

            recalibrate(work, network, "nominal", 9_600, radii=args.radii)
    out = args.out
    print(
        f"wrote {out / 'model.onnx'} ({(out / 'model.onnx').stat().st_size / 1e6:.2f} MB) and model.json "
        f"in {(time.monotonic() - started) / 60:.1f} min"
    )
    print(
        f"next: python tools/evaluate_model.py --model {out} --network {args.network}  "
        "(held-out evaluation, robustness table, report and figures), then "
        f"heimdall-inference models register {out} --alias champion"
    )
    return 0


if __name__ == "__main__":
    run(main)
