"""A wider world than the nominal simulator, for robust training (see :class:`World`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from inference_worker.core.domain import Domain, DomainReceiver
from inference_worker.science.simulator import CaptureSimulator, SimulatorConfig


@dataclass(frozen=True)
class World:
    """A wider world than the nominal simulator, drawn capture by capture for robust training:
    each departure from the nominal model is present in a share of the captures, so the model
    meets it, alone or with others, and widens its ellipses where the evidence is weak."""

    outside: float = 0.25
    """Share of emitters outside the region (density decaying with the distance to it)."""
    outside_scale_m: float = 15_000.0
    outside_max_m: float = 60_000.0
    propagation: float = 0.35
    """Share with another path-loss exponent and shadowing spread, drawn in the ranges below."""
    path_loss_exponent: tuple[float, float] = (2.6, 3.8)
    shadowing_sigma_db: tuple[float, float] = (4.0, 10.0)
    oscillators: float = 0.25
    """Share whose receivers' oscillators are off by up to ``oscillator_ppm``."""
    oscillator_ppm: float = 50.0
    wide_power: float = 0.25
    """Share with transmit powers drawn from the wider ``tx_power_dbm``."""
    tx_power_dbm: tuple[float, float] = (10.0, 60.0)
    overload: float = 0.08
    """Share whose receivers' ADC full scale is low enough for strong signals to clip."""
    full_scale_dbm: tuple[float, float] = (-75.0, -50.0)
    interference: float = 0.08
    """Share in which one receiver hears an interfering burst."""

    def draw(self, rng: np.random.Generator, nominal: SimulatorConfig) -> SimulatorConfig:
        """The configuration of one capture's world."""
        changes: dict[str, object] = {}
        if rng.random() < self.outside:
            changes.update(
                outside_fraction=1.0,
                outside_scale_m=self.outside_scale_m,
                outside_max_m=self.outside_max_m,
            )
        if rng.random() < self.propagation:
            changes.update(
                path_loss_exponent=float(rng.uniform(*self.path_loss_exponent)),
                shadowing_sigma_db=float(rng.uniform(*self.shadowing_sigma_db)),
            )
        if rng.random() < self.oscillators:
            changes["oscillator_ppm"] = float(rng.uniform(0.0, self.oscillator_ppm))
        if rng.random() < self.wide_power:
            changes["tx_power_dbm"] = self.tx_power_dbm
        if rng.random() < self.overload:
            changes["full_scale_dbm"] = float(rng.uniform(*self.full_scale_dbm))
        if rng.random() < self.interference:
            changes["interference_probability"] = 1.0
        return replace(nominal, **changes)  # type: ignore[arg-type]

    def to_metadata(self) -> dict[str, object]:
        return asdict(self)


def domain_of(simulator: CaptureSimulator, world: World | None = None) -> Domain:
    """The domain of a model trained with ``simulator`` (in ``world``, or the nominal one):
    its network and region, and the ranges of everything the world varies."""
    cfg = simulator.config
    south, north, west, east = simulator.region()
    sigma, ple, tx = (
        (cfg.shadowing_sigma_db,) * 2,
        (cfg.path_loss_exponent,) * 2,
        cfg.tx_power_dbm,
    )
    if world is not None and world.propagation > 0:
        ple = (
            min(ple[0], world.path_loss_exponent[0]),
            max(ple[1], world.path_loss_exponent[1]),
        )
        sigma = (
            min(sigma[0], world.shadowing_sigma_db[0]),
            max(sigma[1], world.shadowing_sigma_db[1]),
        )
    if world is not None and world.wide_power > 0:
        tx = (min(tx[0], world.tx_power_dbm[0]), max(tx[1], world.tx_power_dbm[1]))
    outside = (
        (0.0, 15_000.0, 0.0)
        if world is None
        else (world.outside, world.outside_scale_m, world.outside_max_m)
    )
    return Domain(
        receivers=tuple(
            DomainReceiver(r.id, r.lat, r.lon, r.antenna_height_m, r.gain_offset_db)
            for r in simulator.receivers
        ),
        region=(south, north, west, east),
        frequency_mhz=cfg.frequency_mhz,
        tx_power_dbm=(float(tx[0]), float(tx[1])),
        path_loss_exponent=(float(ple[0]), float(ple[1])),
        shadowing_sigma_db=(float(sigma[0]), float(sigma[1])),
        reference_distance_m=cfg.reference_distance_m,
        reference_antenna_height_m=cfg.reference_antenna_height_m,
        noise_dbm_per_hz=cfg.noise_dbm_per_hz,
        full_scale_dbm=cfg.full_scale_dbm,
        outside_share=outside[0],
        outside_scale_m=outside[1],
        outside_max_m=outside[2],
    )
