"""The reference localization network (PyTorch), its loss, and the graph exported to ONNX.

A compact ConvNeXt-style network reads the (3, 128, 32) log-mel PSD features; a parameter-free
branch inside the same graph turns them back into the in-band received power per receiver (the
physical location cue) and its spread over the capture. The head predicts the position in a
local east/north frame and a 2-D Gaussian (σ_east, σ_north, ρ), trained with the Gaussian
negative log-likelihood in kilometres. ``ServiceContract`` wraps it as the service's contract
``(B, 3, 128, 32) -> (B, 5) = [lat°, lon°, σ_east m, σ_north m, ρ]``.

Imported by ``tools/train_reference_model.py`` once it has checked that PyTorch is installed.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from inference_worker.core.features import FeatureParams
from inference_worker.core.mel import mel_band_widths_hz
from inference_worker.science.simulator import CaptureSimulator

POSITION_SCALE_M = 20_000.0
SIGMA_SCALE_M = 10_000.0
SIGMA_FLOOR_M = 200.0


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

    mean_db: torch.Tensor  # buffers, registered in __init__
    std_db: torch.Tensor
    band_widths: torch.Tensor

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

    origin: torch.Tensor  # buffers, registered in __init__
    per_metre: torch.Tensor

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
