"""A model's domain (the world it was trained for) and the quality check of each capture.

``model.json`` records the domain: the receivers with their heights and gains, the region of
interest, the carrier frequency, the transmit-power range, the propagation assumptions (path-loss
law, shadowing), the receivers' noise floor and ADC full scale, and the prior on emitters
outside the region. For every capture the worker checks what can be checked without the truth:

* ``clipping``: samples at the ADC's full scale (the received power is then a lower bound);
* ``off_band``: the signal lies (partly) where the features cannot follow it;
* ``no_signal``: no receiver hears anything above its noise;
* ``frequency``: the capture's carrier is far from the frequency the model was trained at (path
  loss and antenna gains change with it);
* ``power_inconsistent``: no position and transmit power in the domain explain the powers;
* ``outside_region``: the powers favour, under the domain's propagation model, a position
  outside the region (Bayes factor of outside against inside above the domain's threshold,
  fitted by the calibration tools to caution a share of the emitters inside: a quarter unless
  the domain's ``outside_caution_share`` says otherwise).
  Three received powers with an unknown transmit power and several dB of shadowing say little
  about range, so this flag is weak evidence — it fires for about half of the emitters far
  outside the packaged network's region and a quarter of those inside — and is a *caution*:
  it is listed in ``cautions`` and leaves ``in_domain`` as the other checks say. The
  evaluation tool measures both rates.

Pure numpy: the grid posterior uses the same path-loss law as the simulator.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from inference_worker.core.ellipse import metres_per_degree
from inference_worker.core.features import BandReport, FeatureParams
from inference_worker.core.mel import mel_band_widths_hz

FULL_SCALE = 0.999
"""|I| or |Q| at or above this (full scale is 1.0) counts as a clipped sample."""
CLIPPED_SHARE = 1e-3
"""A receiver clips when more than this share of its samples sit at full scale."""
OFF_BAND_SHARE = 0.2
"""A receiver's signal is off band when more than this share of its power lies outside."""
EDGE_ROOM_HZ = 2_500.0
"""A signal centred closer than this to the edge of the band read loses part of itself."""
OUTSIDE_EVIDENCE = 1.35
"""Bayes factor (posterior odds of outside over the prior odds) from which ``outside_region``
is flagged by a model that records no threshold of its own; for the packaged network it flags
~52 % of emitters 20-40 km outside and ~22 % of emitters inside on simulated 48 kHz captures
(the received powers say little more than that about range)."""
OUTSIDE_CAUTION_SHARE = 0.25
"""Share of emitters inside the region a threshold is fitted to caution, unless a domain says."""
MISFIT_LIMIT = 13.8
"""Squared misfit (in units of the expected spread) past which powers are inconsistent:
chi-square with 2 degrees of freedom at 0.1 %."""
FREQUENCY_TOLERANCE = 0.1
"""Relative distance of a capture's carrier from the domain's beyond which it is flagged."""
GRID_SPACING_M = 2_000.0
MEASUREMENT_SIGMA_DB = 2.0


def path_gain_db(
    distance_m: np.ndarray,
    *,
    frequency_mhz: float,
    path_loss_exponent: float,
    reference_distance_m: float,
    fixed_gain_db: np.ndarray,
) -> np.ndarray:
    """Mean gain (dB) over log-distance path loss with free space up to the reference distance,
    plus each receiver's fixed gain (antenna height, cables, calibration)."""
    wavelength = 299.792_458 / frequency_mhz
    d0 = reference_distance_m
    free_space_d0 = 20.0 * math.log10(4.0 * math.pi * d0 / wavelength)
    loss = free_space_d0 + 10.0 * path_loss_exponent * np.log10(distance_m / d0)
    return fixed_gain_db - loss


@dataclass(frozen=True)
class DomainReceiver:
    id: str
    lat: float
    lon: float
    antenna_height_m: float
    gain_offset_db: float


@dataclass(frozen=True)
class Domain:
    """The world a model was trained for (see the module's docstring)."""

    receivers: tuple[DomainReceiver, ...]
    region: tuple[float, float, float, float]
    """(south, north, west, east) degrees."""
    frequency_mhz: float
    tx_power_dbm: tuple[float, float]
    path_loss_exponent: tuple[float, float]
    shadowing_sigma_db: tuple[float, float]
    reference_distance_m: float
    reference_antenna_height_m: float
    noise_dbm_per_hz: float
    full_scale_dbm: float
    outside_share: float
    outside_scale_m: float
    outside_max_m: float
    outside_evidence: float = OUTSIDE_EVIDENCE
    """Bayes factor from which ``outside_region`` is flagged (fitted by the calibration tools:
    ``inference_worker.science.calibration.fit_outside_evidence``)."""
    outside_caution_share: float = OUTSIDE_CAUTION_SHARE
    """Share of emitters inside the region the threshold is fitted to caution."""

    @classmethod
    def from_metadata(cls, data: dict[str, Any]) -> Domain:
        receivers = tuple(DomainReceiver(**r) for r in data["receivers"])
        pairs = ("tx_power_dbm", "path_loss_exponent", "shadowing_sigma_db")
        values = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        values.update({k: tuple(float(x) for x in data[k]) for k in pairs})
        values["region"] = tuple(float(x) for x in data["region"])
        threshold = float(values.get("outside_evidence", OUTSIDE_EVIDENCE))
        if not (math.isfinite(threshold) and threshold > 0.0):
            raise ValueError(f"domain.outside_evidence must be a positive number, not {threshold}")
        share = float(values.get("outside_caution_share", OUTSIDE_CAUTION_SHARE))
        if not 0.0 < share < 1.0:
            raise ValueError(f"domain.outside_caution_share must lie between 0 and 1, not {share}")
        return cls(**{**values, "receivers": receivers})

    def outside_m(self, lat: float, lon: float) -> float:
        """How far a position lies outside the region, in metres (0 inside)."""
        south, north, west, east = self.region
        m_lat, m_lon = metres_per_degree((south + north) / 2.0)
        dx = max(west - lon, lon - east, 0.0) * m_lon
        dy = max(south - lat, lat - north, 0.0) * m_lat
        return math.hypot(dx, dy)

    def to_metadata(self) -> dict[str, Any]:
        data = asdict(self)
        data["receivers"] = [asdict(r) for r in self.receivers]
        data["region"] = list(self.region)
        return data

    @functools.cached_property
    def frame(self) -> DomainGrid:
        return DomainGrid(self)


class DomainGrid:
    """Positions around the region, their prior and their path gains to each receiver."""

    def __init__(self, domain: Domain) -> None:
        lats = np.array([r.lat for r in domain.receivers])
        lons = np.array([r.lon for r in domain.receivers])
        self.origin = (float(lats.mean()), float(lons.mean()))
        m_lat, m_lon = metres_per_degree(self.origin[0])
        rx_e, rx_n = (lons - self.origin[1]) * m_lon, (lats - self.origin[0]) * m_lat
        south, north, west, east = domain.region
        w, e = (west - self.origin[1]) * m_lon, (east - self.origin[1]) * m_lon
        s, n = (south - self.origin[0]) * m_lat, (north - self.origin[0]) * m_lat
        grow = domain.outside_max_m if domain.outside_share > 0 else 0.0
        es = np.arange(w - grow + GRID_SPACING_M / 2, e + grow, GRID_SPACING_M)
        ns = np.arange(s - grow + GRID_SPACING_M / 2, n + grow, GRID_SPACING_M)
        ge, gn = np.meshgrid(es, ns)
        points = np.stack([ge.ravel(), gn.ravel()], axis=-1)
        dx = np.maximum(np.maximum(w - points[:, 0], points[:, 0] - e), 0.0)
        dy = np.maximum(np.maximum(s - points[:, 1], points[:, 1] - n), 0.0)
        outside_m = np.hypot(dx, dy)
        self.outside = outside_m > 0
        # Prior: uniform inside; outside, decaying with the distance, holding outside_share.
        prior = np.where(self.outside, np.exp(-outside_m / domain.outside_scale_m), 1.0)
        prior[outside_m > grow] = 0.0
        if domain.outside_share > 0 and self.outside.any():
            in_count = (~self.outside).sum()
            prior[self.outside] *= domain.outside_share / prior[self.outside].sum()
            prior[~self.outside] = (1.0 - domain.outside_share) / in_count
        self.log_prior = np.log(np.maximum(prior, 1e-300))
        heights = np.array([r.antenna_height_m for r in domain.receivers])
        fixed = np.array([r.gain_offset_db for r in domain.receivers]) + 20.0 * np.log10(
            heights / domain.reference_antenna_height_m
        )
        distance = np.maximum(
            np.hypot(points[:, None, 0] - rx_e[None, :], points[:, None, 1] - rx_n[None, :]), 10.0
        )
        ple = float(np.mean(domain.path_loss_exponent))
        gain_db = path_gain_db(
            distance,
            frequency_mhz=domain.frequency_mhz,
            path_loss_exponent=ple,
            reference_distance_m=domain.reference_distance_m,
            fixed_gain_db=fixed,
        )
        # Per point: the gains' mean and their spread about it, so that a capture's misfit is
        # one small matrix product (see _position_evidence).
        self.mean_gain_db = gain_db.mean(axis=1)
        self.centred_gain_db = gain_db - self.mean_gain_db[:, None]
        self.centred_gain_sq = (self.centred_gain_db**2).sum(axis=1)
        self.points = points


def clipped_share(iq: np.ndarray) -> np.ndarray:
    """Per receiver: the share of samples whose I or Q sits at the ADC's full scale."""
    parts = iq.view(np.float32).reshape(iq.shape[0], -1)
    shares = np.zeros(iq.shape[0])
    # Most captures are far from full scale: the extremes alone tell, without a temporary array.
    for row in np.flatnonzero(
        (parts.max(axis=1) >= FULL_SCALE) | (parts.min(axis=1) <= -FULL_SCALE)
    ):
        pairs = np.abs(parts[row].reshape(-1, 2)).max(axis=1)
        shares[row] = np.count_nonzero(pairs >= FULL_SCALE) / max(iq.shape[1], 1)
    return shares


def band_power_dbfs(features: np.ndarray, params: FeatureParams) -> np.ndarray:
    """Per receiver: mean in-band power (signal and noise) in dBFS, read back from features."""
    scale = math.log(10.0) / 10.0  # dB to natural log of power
    linear = np.exp(
        (features * np.float32(params.std_db * scale)) + np.float32(params.mean_db * scale)
    )
    power = (
        np.einsum("rmf,m->r", linear, mel_band_widths_hz(params).astype(np.float32))
        / features.shape[2]
    )
    return 10.0 * np.log10(np.maximum(power.astype(np.float64), 1e-30))


def assess(
    features: np.ndarray,
    band: BandReport,
    clipped: np.ndarray,
    params: FeatureParams,
    receiver_ids: tuple[str, ...],
    domain: Domain | None,
    frequency_mhz: float | None = None,
) -> dict[str, Any]:
    """The ``quality`` block of a result: in or out of the model's domain and why (``reasons``),
    and weak evidence that does not decide it (``cautions``)."""
    reasons: list[dict[str, Any]] = []
    cautions: list[dict[str, Any]] = []

    def flag(
        code: str, detail: str, which: np.ndarray | None = None, caution: bool = False
    ) -> None:
        entry: dict[str, Any] = {"code": code, "detail": detail}
        if which is not None:
            entry["receivers"] = [receiver_ids[i] for i in np.flatnonzero(which)]
        (cautions if caution else reasons).append(entry)

    clips = clipped > CLIPPED_SHARE
    if clips.any():
        flag("clipping", f"up to {100 * clipped.max():.1f} % of samples at full scale", clips)
    edge = np.abs(band.signal_offset_hz - band.carrier_offset_hz) > (
        params.bandwidth_hz / 2.0 - EDGE_ROOM_HZ
    )
    off = (band.off_band_share > OFF_BAND_SHARE) | edge
    if off.any():
        flag(
            "off_band",
            f"signal centred up to {np.abs(band.signal_offset_hz).max():.0f} Hz off the tuned "
            f"frequency; the band read reaches ±{params.bandwidth_hz / 2 + band.reach_hz:.0f} Hz",
            off,
        )
    block: dict[str, Any] = {"in_domain": None, "reasons": reasons, "cautions": cautions}
    if domain is not None and frequency_mhz is not None:
        if abs(frequency_mhz / domain.frequency_mhz - 1.0) > FREQUENCY_TOLERANCE:
            flag(
                "frequency",
                f"captured at {frequency_mhz:g} MHz; the model was trained at "
                f"{domain.frequency_mhz:g} MHz",
            )
    if domain is not None:
        heard, power_dbm = received_power(features, params, domain)
        if not heard.any():
            flag("no_signal", "no receiver hears a signal above its noise floor")
        misfit, outside = _position_evidence(power_dbm, domain)
        if heard.any() and misfit > MISFIT_LIMIT:
            flag(
                "power_inconsistent",
                "no position and transmit power in the model's domain explain the received "
                f"powers (misfit {misfit:.1f}, limit {MISFIT_LIMIT})",
            )
        evidence = outside_evidence(outside, domain.outside_share)
        if heard.any() and evidence > domain.outside_evidence:
            flag(
                "outside_region",
                f"the powers favour a position outside the region (probability {outside:.2f} "
                f"against {domain.outside_share:.2f} before the capture: Bayes factor "
                f"{evidence:.2f}, the model cautions from {domain.outside_evidence:.2f})",
                caution=True,
            )
        block["in_domain"] = not reasons
        block["signal_power_dbm"] = [round(float(p), 1) for p in power_dbm]
        block["outside_probability"] = round(float(outside), 3)
        # unrounded, so that a client comparing the two compares as the caution does
        block["outside_evidence"] = float(evidence) if heard.any() else None
        block["outside_threshold"] = float(domain.outside_evidence)
    block["carrier_offset_hz"] = [round(float(f)) for f in band.signal_offset_hz]
    return block


def received_power(
    features: np.ndarray, params: FeatureParams, domain: Domain
) -> tuple[np.ndarray, np.ndarray]:
    """Per receiver: whether it hears a signal above its noise floor, and the signal's power
    (dBm; band power minus the domain's noise floor) read back from the features."""
    noise_dbfs = domain.noise_dbm_per_hz - domain.full_scale_dbm
    noise = 10.0 ** (noise_dbfs / 10.0) * params.bandwidth_hz
    total = 10.0 ** (band_power_dbfs(features, params) / 10.0)
    heard = total > 1.25 * noise  # the signal adds at least a quarter of the noise
    signal = np.maximum(total - noise, 0.01 * noise)
    return heard, 10.0 * np.log10(signal) + domain.full_scale_dbm


def capture_outside_evidence(
    features: np.ndarray, params: FeatureParams, domain: Domain
) -> float | None:
    """The Bayes factor of outside against inside that the ``outside_region`` caution compares
    with the domain's threshold; None when no receiver hears a signal (nothing is cautioned)."""
    heard, power_dbm = received_power(features, params, domain)
    if not heard.any():
        return None
    return outside_evidence(_position_evidence(power_dbm, domain)[1], domain.outside_share)


def outside_evidence(probability: float, prior_share: float) -> float:
    """Bayes factor of outside against inside: posterior odds over prior odds (0 when the
    domain has no prior outside the region)."""
    if not 0.0 < prior_share < 1.0:
        return 0.0
    odds = probability / max(1.0 - probability, 1e-12)
    return odds / (prior_share / (1.0 - prior_share))


def _position_evidence(power_dbm: np.ndarray, domain: Domain) -> tuple[float, float]:
    """(least squared misfit over the domain, posterior probability of lying outside the
    region) of the received powers, under the domain's path-loss law and priors."""
    grid = domain.frame
    sigma = math.hypot(max(domain.shadowing_sigma_db), MEASUREMENT_SIGMA_DB)
    # The transmit power each receiver implies is power - gain; per point, its mean (the fitted
    # transmit power) and the squared spread about it, expanded so no (points, 3) array is made.
    centred = power_dbm - power_dbm.mean()
    centre = power_dbm.mean() - grid.mean_gain_db
    sse = grid.centred_gain_sq - 2.0 * (grid.centred_gain_db @ centred) + centred @ centred
    lo, hi = domain.tx_power_dbm
    beyond = np.maximum(lo - centre, 0.0) + np.maximum(centre - hi, 0.0)
    cost = (sse + 3.0 * beyond**2) / sigma**2
    log_post = -0.5 * cost + grid.log_prior
    log_post -= log_post.max()
    weights = np.exp(log_post)
    outside = float(weights[grid.outside].sum() / weights.sum())
    return float(cost.min()), outside
