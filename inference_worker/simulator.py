"""Simulated synchronized captures from a network of 3 receivers (pure numpy, seeded).

Used by the demo, the tests and the tools. Physics, with typical values (see
:class:`SimulatorConfig` for the references):

* received power by log-distance path loss with log-normal shadowing, an unknown transmit
  power drawn over a wide range and a fixed gain offset per receiver;
* small-scale (Rayleigh/Rician) fading across the capture, a thermal noise floor, and a
  frequency offset per receiver;
* a narrowband signal (FM tone or CW keying) rendered as complex64 IQ at any sample rate.

Levels are expressed in dBFS with the receivers' ADC full scale at ``full_scale_dbm``, so a
capture looks like what a WebSDR delivers: samples of magnitude well below 1.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inference_worker.ellipse import metres_per_degree

RECEIVERS_FILE = Path(__file__).resolve().parent / "data" / "receivers.json"


@dataclass(frozen=True)
class ReceiverSite:
    id: str
    name: str
    lat: float
    lon: float
    antenna_height_m: float
    gain_offset_db: float


def load_receivers(path: Path = RECEIVERS_FILE) -> tuple[ReceiverSite, ...]:
    """The receiver network (ids, coordinates, antenna height, gain offset) from a JSON file."""
    entries = json.loads(path.read_text())["receivers"]
    return tuple(
        ReceiverSite(
            id=e["id"],
            name=e.get("name", e["id"]),
            lat=float(e["lat"]),
            lon=float(e["lon"]),
            antenna_height_m=float(e.get("antenna_height_m", 10.0)),
            gain_offset_db=float(e.get("gain_offset_db", 0.0)),
        )
        for e in entries
    )


@dataclass(frozen=True)
class SimulatorConfig:
    """Simulation parameters with typical values.

    Path-loss exponent 2.7-3.5 and shadowing 4-12 dB for suburban/rural VHF-UHF links
    (Rappaport, *Wireless Communications*, 2nd ed., tables 4.2 and 4.3); thermal noise
    -174 dBm/Hz plus a receiver noise figure of 6-10 dB for a WebSDR front end.
    """

    frequency_mhz: float = 145.5
    path_loss_exponent: float = 3.0
    reference_distance_m: float = 1_000.0
    shadowing_sigma_db: float = 6.0
    tx_power_dbm: tuple[float, float] = (27.0, 47.0)  # 0.5 W handheld .. 50 W base station
    noise_figure_db: float = 8.0
    full_scale_dbm: float = -10.0
    rician_k_db: tuple[float, float] = (-10.0, 10.0)  # from Rayleigh-like to line-of-sight
    max_doppler_hz: float = 5.0
    max_frequency_offset_hz: float = 300.0
    fm_deviation_hz: float = 2_500.0
    region_margin_m: float = 20_000.0


@dataclass(frozen=True)
class SimulatedCapture:
    iq: np.ndarray  # (3, n) complex64, rows in receiver order
    sample_rate_hz: float
    frequency_mhz: float
    receivers: tuple[str, ...]
    lat: float
    lon: float
    tx_power_dbm: float
    rx_power_dbm: tuple[float, ...]


class CaptureSimulator:
    """Draws emitters around a receiver network and renders what each receiver hears."""

    def __init__(
        self,
        receivers: tuple[ReceiverSite, ...] | None = None,
        config: SimulatorConfig | None = None,
    ) -> None:
        self.receivers = receivers or load_receivers()
        self.config = config or SimulatorConfig()
        lats = np.array([r.lat for r in self.receivers])
        lons = np.array([r.lon for r in self.receivers])
        self.origin = (float(lats.mean()), float(lons.mean()))
        m_lat, m_lon = metres_per_degree(self.origin[0])
        self._m_per_deg = (m_lat, m_lon)
        self._rx_east = (lons - self.origin[1]) * m_lon
        self._rx_north = (lats - self.origin[0]) * m_lat

    def region(self) -> tuple[float, float, float, float]:
        """(south, north, west, east) degrees of the box emitters are drawn in."""
        margin = self.config.region_margin_m
        m_lat, m_lon = self._m_per_deg
        return (
            self.origin[0] + (self._rx_north.min() - margin) / m_lat,
            self.origin[0] + (self._rx_north.max() + margin) / m_lat,
            self.origin[1] + (self._rx_east.min() - margin) / m_lon,
            self.origin[1] + (self._rx_east.max() + margin) / m_lon,
        )

    def draw_position(self, rng: np.random.Generator) -> tuple[float, float]:
        south, north, west, east = self.region()
        return float(rng.uniform(south, north)), float(rng.uniform(west, east))

    def distances_m(self, lat: float, lon: float) -> np.ndarray:
        m_lat, m_lon = self._m_per_deg
        east = (lon - self.origin[1]) * m_lon - self._rx_east
        north = (lat - self.origin[0]) * m_lat - self._rx_north
        return np.maximum(np.hypot(east, north), 10.0)

    def mean_rx_power_dbm(self, lat: float, lon: float, tx_power_dbm: float) -> np.ndarray:
        """Received power before shadowing: transmit power - log-distance path loss + gains."""
        cfg = self.config
        wavelength = 299.792_458 / cfg.frequency_mhz
        d0 = cfg.reference_distance_m
        free_space_d0 = 20.0 * math.log10(4.0 * math.pi * d0 / wavelength)
        loss = free_space_d0 + 10.0 * cfg.path_loss_exponent * np.log10(
            self.distances_m(lat, lon) / d0
        )
        gains = np.array([r.gain_offset_db for r in self.receivers])
        return tx_power_dbm - loss + gains

    def simulate(
        self,
        rng: np.random.Generator,
        *,
        sample_rate_hz: float = 12_000.0,
        duration_s: float = 0.25,
        position: tuple[float, float] | None = None,
    ) -> SimulatedCapture:
        cfg = self.config
        lat, lon = position if position is not None else self.draw_position(rng)
        tx_power = float(rng.uniform(*cfg.tx_power_dbm))
        shadowing = rng.normal(0.0, cfg.shadowing_sigma_db, len(self.receivers))
        rx_power = self.mean_rx_power_dbm(lat, lon, tx_power) + shadowing
        n = int(round(sample_rate_hz * duration_s))
        t = np.arange(n) / sample_rate_hz
        baseband = self._signal(rng, t)
        noise_dbm_per_hz = -174.0 + cfg.noise_figure_db
        noise_var = 10.0 ** ((noise_dbm_per_hz - cfg.full_scale_dbm) / 10.0) * sample_rate_hz
        rows = []
        for power_dbm in rx_power:
            amplitude = math.sqrt(10.0 ** ((power_dbm - cfg.full_scale_dbm) / 10.0))
            offset = rng.uniform(-cfg.max_frequency_offset_hz, cfg.max_frequency_offset_hz)
            fading = self._fading(rng, t)
            noise = rng.normal(0.0, math.sqrt(noise_var / 2.0), (2, n))
            row = (
                amplitude * fading * baseband * np.exp(2j * math.pi * offset * t)
                + noise[0]
                + 1j * noise[1]
            )
            rows.append(row)
        iq = np.asarray(rows, dtype=np.complex64)
        return SimulatedCapture(
            iq=iq,
            sample_rate_hz=float(sample_rate_hz),
            frequency_mhz=cfg.frequency_mhz,
            receivers=tuple(r.id for r in self.receivers),
            lat=lat,
            lon=lon,
            tx_power_dbm=tx_power,
            rx_power_dbm=tuple(float(p) for p in rx_power),
        )

    def _signal(self, rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
        """Unit-power narrowband signal: an FM tone or on/off-keyed CW."""
        if rng.random() < 0.7:
            tone_hz = rng.uniform(400.0, 1_500.0)
            beta = self.config.fm_deviation_hz / tone_hz
            phase = beta * np.sin(2.0 * math.pi * tone_hz * t + rng.uniform(0, 2 * math.pi))
            return np.exp(1j * phase)
        keying_hz = rng.uniform(3.0, 10.0)
        keyed = np.sin(2.0 * math.pi * keying_hz * t + rng.uniform(0, 2 * math.pi)) > -0.3
        return keyed.astype(np.float64) / math.sqrt(max(keyed.mean(), 1e-3)) + 0j

    def _fading(self, rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
        """Unit-mean-power Rician fading: a line-of-sight term plus a sum-of-sinusoids scatter."""
        k = 10.0 ** (rng.uniform(*self.config.rician_k_db) / 10.0)
        paths = 8
        doppler = self.config.max_doppler_hz * np.cos(rng.uniform(0, 2 * math.pi, paths))
        phases = rng.uniform(0, 2 * math.pi, paths)
        scatter = np.exp(1j * (2 * math.pi * np.outer(t, doppler) + phases)).sum(axis=1)
        scatter /= math.sqrt(paths)
        los = np.exp(1j * rng.uniform(0, 2 * math.pi))
        return math.sqrt(k / (k + 1.0)) * los + math.sqrt(1.0 / (k + 1.0)) * scatter
