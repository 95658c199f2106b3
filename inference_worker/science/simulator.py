"""Simulated synchronized captures from a network of 3 receivers (pure numpy, seeded).

Used by the demo, the tests, training, evaluation and load tests. The physics, with the typical
values and their sources in :class:`SimulatorConfig`:

* received power by log-distance path loss with a receive-antenna height gain, log-normal
  shadowing that is spatially correlated (a fixed random field per receiver over the emitter's
  position: the "environment"), an unknown transmit power drawn over a wide range, and a fixed
  gain offset per receiver (cable losses, antenna, calibration);
* small-scale Rician/Rayleigh fading across the capture, a thermal noise floor, and a frequency
  offset per receiver (local oscillator error);
* a narrowband signal (FM voice-like tone or on/off-keyed CW) rendered as complex64 IQ at any
  sample rate, through the receiver's anti-alias filter (what lies beyond the capture's band is
  filtered out, not folded in) and its ADC (I and Q clip at full scale);
* optionally what the world adds beyond the nominal model (:class:`World`): emitters outside
  the region, other propagation, oscillator errors in ppm, overloaded receivers, interference.

Levels are in dBFS with the receivers' ADC full scale at ``full_scale_dbm``, so a capture looks
like what a WebSDR delivers. Positions live in a local east/north frame (metres) around the
network's centre; at these distances the flat approximation is good to a few metres.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.signal

from inference_worker.core.domain import path_gain_db
from inference_worker.core.ellipse import metres_per_degree
from inference_worker.science.network import Network, ReceiverSite, load_network
from inference_worker.science.signals import add_interference, narrowband_signal, rician_fading

SIGNAL_HALF_WIDTH_HZ = 5_000.0
"""How far the simulated signals reach from their carrier (FM: deviation plus tone, with room)."""


@dataclass(frozen=True)
class SimulatorConfig:
    """Every simulation parameter, with typical values.

    Sources: path-loss exponent 2.7-3.5 and shadowing 4-12 dB for VHF/UHF links over mixed
    suburban and rural terrain (Rappaport, *Wireless Communications*, 2nd ed., tables 4.2-4.3);
    shadowing decorrelation distance of the order of 500 m in suburban areas (Gudmundson,
    Electronics Letters 27(23), 1991); receive height gain of 20 log10(h/h0) dB (two-ray ground
    reflection model, Rappaport eq. 4.52); thermal noise -174 dBm/Hz plus a receiver noise
    figure of 6-10 dB for a WebSDR front end; Doppler up to ~10 Hz at 145 MHz for a vehicle at
    70 km/h; 2 m amateur FM with 2.5 kHz deviation (12.5 kHz channels); transmitters from a
    0.1 W handheld to a 100 W base station.
    """

    frequency_mhz: float = 145.5
    path_loss_exponent: float = 3.0
    reference_distance_m: float = 1_000.0
    reference_antenna_height_m: float = 10.0
    shadowing_sigma_db: float = 6.0
    shadowing_correlation_m: float = 500.0
    environment_seed: int = 2026
    """Seed of the shadowing fields: the same seed is the same terrain."""
    shadowing_components: int = 512
    tx_power_dbm: tuple[float, float] = (20.0, 50.0)
    noise_figure_db: float = 8.0
    full_scale_dbm: float = -10.0
    rician_k_db: tuple[float, float] = (-10.0, 10.0)
    doppler_hz: tuple[float, float] = (0.5, 10.0)
    max_frequency_offset_hz: float = 300.0
    fm_deviation_hz: float = 2_500.0
    fm_fraction: float = 0.7
    region_margin_m: float = 10_000.0
    oscillator_ppm: float = 0.0
    """Each receiver's oscillator error, drawn within ±this many ppm of the carrier (cheap SDRs:
    up to ±50 ppm, ±7.3 kHz at 145 MHz), on top of ``max_frequency_offset_hz``."""
    interference_probability: float = 0.0
    """Chance that one receiver of a capture hears an interfering burst in its band."""
    outside_fraction: float = 0.0
    """Share of emitters drawn outside the region, with a density decaying with the distance
    to it (``outside_scale_m``) up to ``outside_max_m``."""
    outside_scale_m: float = 15_000.0
    outside_max_m: float = 60_000.0

    @property
    def noise_dbm_per_hz(self) -> float:
        return -174.0 + self.noise_figure_db


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
    """Mean received power per receiver after shadowing, before small-scale fading."""
    extras: dict[str, float] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return self.iq.shape[1] / self.sample_rate_hz


@dataclass(frozen=True)
class HeldOutCells:
    """A spatial split: square cells of ``cell_m`` metres, a ``fraction`` of them held out.

    Emitters for evaluation are drawn only in held-out cells and emitters for training only in
    the others, so evaluation never sees a position used in training. Cells are small against
    the model's uncertainty (kilometres), so the holes they leave in the training positions do
    not bias what the model learns about where emitters can be.
    """

    cell_m: float = 1_000.0
    fraction: float = 0.2
    seed: int = 11

    def is_held_out(self, east_m: np.ndarray | float, north_m: np.ndarray | float) -> np.ndarray:
        ix = np.floor(np.asarray(east_m) / self.cell_m).astype(np.int64)
        iy = np.floor(np.asarray(north_m) / self.cell_m).astype(np.int64)
        mixed = (ix * 73_856_093) ^ (iy * 19_349_663) ^ (self.seed * 83_492_791)
        return (mixed % 1_000) < self.fraction * 1_000


class CaptureSimulator:
    """Draws emitters around a receiver network and renders what each receiver hears."""

    def __init__(
        self,
        receivers: tuple[ReceiverSite, ...] | None = None,
        config: SimulatorConfig | None = None,
        region: tuple[float, float, float, float] | None = None,
    ) -> None:
        if receivers is None:
            network = load_network()
            receivers, region = network.receivers, region or network.region
        self.receivers = receivers
        self.region_deg = region
        self.config = config or SimulatorConfig()
        lats = np.array([r.lat for r in self.receivers])
        lons = np.array([r.lon for r in self.receivers])
        self.origin = (float(lats.mean()), float(lons.mean()))
        self.m_per_deg = metres_per_degree(self.origin[0])
        self.rx_east, self.rx_north = self.to_local(lats, lons)
        heights = np.array([r.antenna_height_m for r in self.receivers])
        self.fixed_gain_db = np.array([r.gain_offset_db for r in self.receivers]) + 20.0 * np.log10(
            heights / self.config.reference_antenna_height_m
        )
        # Spatially correlated shadowing: one random field per receiver over the emitter
        # position, with an exponential (Gudmundson) correlation, drawn as random Fourier
        # features. Its spectral density is a 2-D Student-t with one degree of freedom.
        env = np.random.default_rng(self.config.environment_seed)
        m = self.config.shadowing_components
        gauss = env.normal(size=(len(self.receivers), m, 2))
        chi = np.sqrt(env.chisquare(1, size=(len(self.receivers), m, 1)))
        self._omega = gauss / (chi * self.config.shadowing_correlation_m)
        self._phase = env.uniform(0.0, 2.0 * math.pi, size=(len(self.receivers), m))

    # --- geometry -----------------------------------------------------------------------------
    def to_local(
        self, lat: np.ndarray | float, lon: np.ndarray | float
    ) -> tuple[np.ndarray, np.ndarray]:
        """(east, north) metres from the network's centre."""
        m_lat, m_lon = self.m_per_deg
        return (np.asarray(lon) - self.origin[1]) * m_lon, (
            np.asarray(lat) - self.origin[0]
        ) * m_lat

    def to_geo(
        self, east: np.ndarray | float, north: np.ndarray | float
    ) -> tuple[np.ndarray, np.ndarray]:
        """(lat, lon) degrees of local (east, north) metres."""
        m_lat, m_lon = self.m_per_deg
        return self.origin[0] + np.asarray(north) / m_lat, self.origin[1] + np.asarray(east) / m_lon

    @classmethod
    def of(cls, network: Network, config: SimulatorConfig | None = None) -> CaptureSimulator:
        return cls(network.receivers, config, network.region)

    def with_config(self, config: SimulatorConfig) -> CaptureSimulator:
        return CaptureSimulator(self.receivers, config, self.region_deg)

    def region_local(self) -> tuple[float, float, float, float]:
        """(west, east, south, north) metres of the region of interest."""
        if self.region_deg is not None:
            south, north, west, east = self.region_deg
            (w, e), (s, n) = self.to_local(np.array([south, north]), np.array([west, east]))
            return float(w), float(e), float(s), float(n)
        margin = self.config.region_margin_m
        return (
            float(self.rx_east.min() - margin),
            float(self.rx_east.max() + margin),
            float(self.rx_north.min() - margin),
            float(self.rx_north.max() + margin),
        )

    def region(self) -> tuple[float, float, float, float]:
        """(south, north, west, east) degrees of the box emitters are drawn in."""
        west, east, south, north = self.region_local()
        lat_s, lon_w = self.to_geo(west, south)
        lat_n, lon_e = self.to_geo(east, north)
        return float(lat_s), float(lat_n), float(lon_w), float(lon_e)

    def outside_distance_m(self, east: np.ndarray | float, north: np.ndarray | float) -> np.ndarray:
        """How far a position lies outside the region (0 inside)."""
        west, east_edge, south, north_edge = self.region_local()
        dx = np.maximum(np.maximum(west - np.asarray(east), np.asarray(east) - east_edge), 0.0)
        dy = np.maximum(np.maximum(south - np.asarray(north), np.asarray(north) - north_edge), 0.0)
        return np.hypot(dx, dy)

    def draw_local(
        self, rng: np.random.Generator, split: HeldOutCells | None = None, held_out: bool = False
    ) -> tuple[float, float]:
        """An emitter position (east, north): uniform in the region, or outside it for a share
        ``outside_fraction`` of draws; with ``split``, only on one side of it."""
        cfg = self.config
        west, east, south, north = self.region_local()
        outside = cfg.outside_fraction > 0 and rng.random() < cfg.outside_fraction
        grow = cfg.outside_max_m if outside else 0.0
        while True:
            x = float(rng.uniform(west - grow, east + grow))
            y = float(rng.uniform(south - grow, north + grow))
            if outside:
                d = float(self.outside_distance_m(x, y))
                if not 0.0 < d <= grow or rng.random() > math.exp(-d / cfg.outside_scale_m):
                    continue
            if split is None or bool(split.is_held_out(x, y)) == held_out:
                return x, y

    def draw_position(self, rng: np.random.Generator) -> tuple[float, float]:
        lat, lon = self.to_geo(*self.draw_local(rng))
        return float(lat), float(lon)

    def distances_m(self, east: np.ndarray | float, north: np.ndarray | float) -> np.ndarray:
        """Distance to each receiver, shape ``(..., 3)``."""
        de = np.asarray(east)[..., None] - self.rx_east
        dn = np.asarray(north)[..., None] - self.rx_north
        return np.maximum(np.hypot(de, dn), 10.0)

    # --- propagation --------------------------------------------------------------------------
    def path_gain_db(self, east: np.ndarray | float, north: np.ndarray | float) -> np.ndarray:
        """Mean gain to each receiver (fixed gains minus path loss), shape ``(..., 3)``."""
        cfg = self.config
        return path_gain_db(
            self.distances_m(east, north),
            frequency_mhz=cfg.frequency_mhz,
            path_loss_exponent=cfg.path_loss_exponent,
            reference_distance_m=cfg.reference_distance_m,
            fixed_gain_db=self.fixed_gain_db,
        )

    def shadowing_db(self, east: np.ndarray | float, north: np.ndarray | float) -> np.ndarray:
        """The terrain's shadowing towards each receiver from an emitter position, ``(..., 3)``."""
        points = np.stack([np.asarray(east, float), np.asarray(north, float)], axis=-1)
        # (..., receivers, components)
        angles = np.einsum("...d,rmd->...rm", points, self._omega) + self._phase
        scale = self.config.shadowing_sigma_db * math.sqrt(2.0 / self._omega.shape[1])
        return scale * np.cos(angles).sum(axis=-1)

    def mean_rx_power_dbm(self, lat: float, lon: float, tx_power_dbm: float) -> np.ndarray:
        """Received power before shadowing and fading."""
        east, north = self.to_local(lat, lon)
        return tx_power_dbm + self.path_gain_db(east, north)

    # --- captures -----------------------------------------------------------------------------
    def simulate(
        self,
        rng: np.random.Generator,
        *,
        sample_rate_hz: float = 12_000.0,
        duration_s: float = 0.25,
        position: tuple[float, float] | None = None,
        local: tuple[float, float] | None = None,
    ) -> SimulatedCapture:
        """One capture. ``position`` (lat, lon) or ``local`` (east, north) fixes the emitter."""
        cfg = self.config
        if local is not None:
            east, north = local
        elif position is not None:
            east, north = (float(v) for v in self.to_local(*position))
        else:
            east, north = self.draw_local(rng)
        lat, lon = (float(v) for v in self.to_geo(east, north))
        tx_power = float(rng.uniform(*cfg.tx_power_dbm))
        shadowing = self.shadowing_db(east, north)
        rx_power = tx_power + self.path_gain_db(east, north) + shadowing
        n = int(round(sample_rate_hz * duration_s))
        n_rx = len(self.receivers)
        offsets = rng.uniform(-cfg.max_frequency_offset_hz, cfg.max_frequency_offset_hz, n_rx)
        offsets += rng.uniform(-1.0, 1.0, n_rx) * cfg.oscillator_ppm * cfg.frequency_mhz
        # Render fast enough for every offset, then through the receiver's anti-alias filter:
        # what lies beyond the capture's band is removed, as a real receiver does, not folded.
        reach = float(np.abs(offsets).max()) + SIGNAL_HALF_WIDTH_HZ
        oversample = (
            1 if reach <= 0.45 * sample_rate_hz else math.ceil(reach / (0.4 * sample_rate_hz))
        )
        rate = sample_rate_hz * oversample
        t = np.arange(n * oversample) / rate
        baseband = narrowband_signal(rng, t, cfg.fm_fraction, cfg.fm_deviation_hz)
        doppler = float(rng.uniform(*cfg.doppler_hz))
        rows = []
        for power_dbm, offset in zip(rx_power, offsets, strict=True):
            amplitude = math.sqrt(10.0 ** ((power_dbm - cfg.full_scale_dbm) / 10.0))
            fading = rician_fading(rng, t, doppler, cfg.rician_k_db)
            rows.append(amplitude * fading * baseband * np.exp(2j * math.pi * offset * t))
        signal = np.asarray(rows)
        if oversample > 1:
            signal = scipy.signal.resample_poly(
                signal, 1, oversample, axis=1, window=("kaiser", 8.0)
            )
        noise_var = 10.0 ** ((cfg.noise_dbm_per_hz - cfg.full_scale_dbm) / 10.0) * sample_rate_hz
        noise = rng.standard_normal((2, n_rx, n), dtype=np.float32)
        iq = signal + (noise[0] + 1j * noise[1]) * np.float32(math.sqrt(noise_var / 2.0))
        if cfg.interference_probability > 0 and rng.random() < cfg.interference_probability:
            add_interference(rng, iq, sample_rate_hz, noise_var)
        # The ADC: I and Q clip at full scale.
        iq = np.clip(iq.real, -1.0, 1.0) + 1j * np.clip(iq.imag, -1.0, 1.0)
        return SimulatedCapture(
            iq=np.asarray(iq, dtype=np.complex64),
            sample_rate_hz=float(sample_rate_hz),
            frequency_mhz=cfg.frequency_mhz,
            receivers=tuple(r.id for r in self.receivers),
            lat=lat,
            lon=lon,
            tx_power_dbm=tx_power,
            rx_power_dbm=tuple(float(p) for p in rx_power),
            extras={
                "east_m": east,
                "north_m": north,
                "doppler_hz": doppler,
                **{f"offset_hz_{i}": float(o) for i, o in enumerate(offsets)},
            },
        )
