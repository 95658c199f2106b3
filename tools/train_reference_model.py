"""Train the reference localization model on simulated captures and export it to ONNX.

A compact ConvNeXt-style network reads the (3, 128, 32) log-mel PSD features; a parameter-free
branch inside the same graph turns them back into the in-band received power per receiver (the
physical location cue) and its spread over the capture. The head predicts the position in a
local east/north frame and a 2-D Gaussian (σ_east, σ_north, ρ), trained with the Gaussian
negative log-likelihood in kilometres. After training, one scale on the sigmas is fitted on a
validation set so the 68 % and 95 % ellipses hold what they claim, then the network is exported
with the service's contract ``(B, 3, 128, 32) -> (B, 5) = [lat°, lon°, σ_east m, σ_north m, ρ]``
and (``--calibrate nominal``, the default, after robust training) its ellipses are fitted again
on captures of the nominal world by ``tools/recalibrate_model.py``: level by level unless
``--radii single``.

Training draws each capture's world around the nominal simulator (``--world robust``, the
default): emitters outside the region, other path-loss exponents and shadowing, oscillator
errors up to ±50 ppm, overloaded receivers, interference; see ``World``. The model's domain
(network, region, Tx power range, band, propagation) is written to ``model.json``.

Needs the ``train`` extra (PyTorch, CPU build):

    pip install -e '.[train]'
    python tools/train_reference_model.py [--network my-network.json --out var/models/mine]
        [--train 40000] [--epochs 16] [--seed 1]

About 25 minutes on a 2-core machine. Data sets are cached under var/datasets/.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import platform
import sys
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.requirements import keep_freed_memory, network_or_exit, require  # noqa: E402

require("torch", "train", "training")
import torch  # noqa: E402
from torch import nn  # noqa: E402

from inference_worker.core.features import FeatureParams  # noqa: E402
from inference_worker.core.mel import mel_band_widths_hz  # noqa: E402
from inference_worker.science.calibration import fit_sigma_scale  # noqa: E402
from inference_worker.science.datasets import (  # noqa: E402
    RAW_DB,
    Dataset,
    DatasetSpec,
    generate,
    print_progress,
)
from inference_worker.science.metrics import (  # noqa: E402
    covariance_from_sigmas,
    coverage,
    error_summary,
    mahalanobis_squared,
)
from inference_worker.science.network import RECEIVERS_FILE  # noqa: E402
from inference_worker.science.simulator import CaptureSimulator  # noqa: E402
from inference_worker.science.world import World, domain_of  # noqa: E402

DEFAULT_OUT = ROOT / "inference_worker" / "models" / "reference"
CACHE_DIR = ROOT / "var" / "datasets"
MODEL_NAME = "heimdall-localization"
VERSION = "2.0.0"
TRAIN_RATES = (12_000.0, 24_000.0, 48_000.0, 96_000.0, 192_000.0)
TRAIN_RATE_WEIGHTS = (0.55, 0.15, 0.12, 0.08, 0.10)
TRAIN_DURATIONS = (0.1, 1.0)
POSITION_SCALE_M = 20_000.0
SIGMA_SCALE_M = 10_000.0
SIGMA_FLOOR_M = 200.0


# --- network -------------------------------------------------------------------------------
class ChannelsLastNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 conv, LayerNorm, pointwise MLP (4x), layer scale, residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.expand = nn.Linear(dim, 4 * dim)
        self.project = nn.Linear(4 * dim, dim)
        self.scale = nn.Parameter(torch.full((dim,), 0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.depthwise(x).permute(0, 2, 3, 1)
        y = self.project(nn.functional.gelu(self.expand(self.norm(y))))
        return x + (self.scale * y).permute(0, 3, 1, 2)


class LocalizationNet(nn.Module):
    """Normalized features -> 5 raw outputs (east, north, σ_east, σ_north, ρ before squashing)."""

    def __init__(self, params: FeatureParams, dims: tuple[int, ...] = (32, 64, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(3, dims[0], (4, 2), stride=(4, 2)),
            ChannelsLastNorm(dims[0]),
        ]
        for i, dim in enumerate(dims):
            if i:
                layers += [ChannelsLastNorm(dims[i - 1]), nn.Conv2d(dims[i - 1], dim, 2, stride=2)]
            layers.append(ConvNeXtBlock(dim))
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(dims[-1])]
        self.trunk = nn.Sequential(*layers)
        self.register_buffer("mean_db", torch.tensor(params.mean_db, dtype=torch.float32))
        self.register_buffer("std_db", torch.tensor(params.std_db, dtype=torch.float32))
        widths = torch.tensor(mel_band_widths_hz(params), dtype=torch.float32)
        self.register_buffer("band_widths", widths.view(1, 1, -1, 1))
        self.head = nn.Sequential(
            nn.Linear(dims[-1] + 9, 128),
            nn.GELU(),
            nn.Linear(128, 128),
            nn.GELU(),
            nn.Linear(128, 5),
        )

    def received_power(self, features: torch.Tensor) -> torch.Tensor:
        """Per receiver: in-band power (dB, centred), its offset from the mean, its spread."""
        db = features * self.std_db + self.mean_db
        frame_power = (torch.pow(10.0, db / 10.0) * self.band_widths).sum(dim=2)  # (B, 3, frames)
        frame_db = 10.0 * torch.log10(frame_power)
        power_db = 10.0 * torch.log10(frame_power.mean(dim=2))
        relative = power_db - power_db.mean(dim=1, keepdim=True)
        spread = frame_db.std(dim=2)
        return torch.cat([(power_db + 80.0) / 20.0, relative / 10.0, spread / 5.0], dim=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        summary = torch.cat([self.trunk(features), self.received_power(features)], dim=1)
        return self.head(summary)


def decode(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raw outputs -> position (B, 2) m, σ_east m, σ_north m, ρ."""
    position = raw[:, :2] * POSITION_SCALE_M
    sigma_east = nn.functional.softplus(raw[:, 2]) * SIGMA_SCALE_M + SIGMA_FLOOR_M
    sigma_north = nn.functional.softplus(raw[:, 3]) * SIGMA_SCALE_M + SIGMA_FLOOR_M
    rho = 0.95 * torch.tanh(raw[:, 4])
    return position, sigma_east, sigma_north, rho


def gaussian_nll(raw: torch.Tensor, truth_m: torch.Tensor) -> torch.Tensor:
    """Mean bivariate Gaussian negative log-likelihood, in kilometres."""
    position, se, sn, rho = decode(raw)
    d = (truth_m - position) / 1e3
    se, sn = se / 1e3, sn / 1e3
    one_minus = 1.0 - rho**2
    z = (d[:, 0] / se) ** 2 + (d[:, 1] / sn) ** 2 - 2.0 * rho * d[:, 0] * d[:, 1] / (se * sn)
    nll = 0.5 * z / one_minus + torch.log(se) + torch.log(sn) + 0.5 * torch.log(one_minus)
    return (nll + math.log(2.0 * math.pi)).mean()


class ServiceContract(nn.Module):
    """The exported graph: normalized features -> [lat°, lon°, σ_east m, σ_north m, ρ]."""

    def __init__(
        self, net: LocalizationNet, simulator: CaptureSimulator, sigma_scale: float
    ) -> None:
        super().__init__()
        self.net = net
        m_lat, m_lon = simulator.m_per_deg
        self.register_buffer("origin", torch.tensor(simulator.origin, dtype=torch.float64))
        self.register_buffer(
            "per_metre", torch.tensor([1.0 / m_lat, 1.0 / m_lon], dtype=torch.float32)
        )
        self.sigma_scale = float(sigma_scale)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        position, se, sn, rho = decode(self.net(features))
        lat = self.origin[0].float() + position[:, 1] * self.per_metre[0]
        lon = self.origin[1].float() + position[:, 0] * self.per_metre[1]
        scale = self.sigma_scale
        return torch.stack([lat, lon, se * scale, sn * scale, rho], dim=1)


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


# --- export --------------------------------------------------------------------------------
def export(
    contract: ServiceContract,
    out: Path,
    params: FeatureParams,
    simulator: CaptureSimulator,
    sample: torch.Tensor,
    training: dict,
    domain: dict,
    name: str = MODEL_NAME,
    version: str = VERSION,
) -> Path:
    contract.eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        torch.onnx.export(
            contract,
            (sample[:2],),
            buffer,
            dynamo=False,
            input_names=["features"],
            output_names=["estimate"],
            dynamic_axes={"features": {0: "batch"}, "estimate": {0: "batch"}},
            opset_version=17,
        )
    data = buffer.getvalue()
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.onnx").write_bytes(data)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=40_000, help="training captures")
    parser.add_argument("--validation", type=int, default=5_000, help="validation captures")
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
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
    parser.add_argument("--name", default=MODEL_NAME, help="model name written to model.json")
    parser.add_argument("--version", default=VERSION, help="model version written to model.json")
    parser.add_argument("--no-cache", action="store_true", help="simulate data sets again")
    args = parser.parse_args()
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
    common = dict(
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
    domain = domain_of(simulator, world).to_metadata()
    out = export(
        contract, args.out, params, simulator, sample, training, domain, args.name, args.version
    )
    difference = check_onnx_agrees(out, contract, sample, simulator)
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
        return 1
    if args.calibrate == "nominal" and world is not None:
        from tools.recalibrate_model import recalibrate

        recalibrate(out, network, "nominal", 9_600, radii=args.radii)
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
    raise SystemExit(main())
