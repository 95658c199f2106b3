"""Classical locators to judge a model against, on the same captures (pure numpy).

* :class:`GridLocator`: maximum likelihood over a grid of positions from the received powers,
  under the simulator's own propagation model (known path-loss law, receiver gains and
  shadowing spread; transmit power unknown within its range and profiled out). It also gives the
  full grid posterior, whose mean and covariance make a calibrated Bayesian baseline.
* :func:`weighted_centroid`: the receivers' positions weighted by linear received power.
* :func:`crb_position_m`: the Cramér-Rao bound on the position error at given emitter positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.fft
from scipy.special import log_ndtr

from inference_worker.science.simulator import CaptureSimulator


def measured_power_dbm(
    iq: np.ndarray,
    sample_rate_hz: float,
    simulator: CaptureSimulator,
    bandwidth_hz: float = 12_000.0,
) -> np.ndarray:
    """Signal power per receiver in dBm: in-band power minus the known noise floor."""
    cfg = simulator.config
    n = iq.shape[-1]
    spectrum = scipy.fft.fft(iq, axis=-1)
    freqs = scipy.fft.fftfreq(n, 1.0 / sample_rate_hz)
    band = np.abs(freqs) <= bandwidth_hz / 2.0
    power = (np.abs(spectrum[..., band]) ** 2).sum(axis=-1) / n**2
    noise_per_sample = 10.0 ** ((cfg.noise_dbm_per_hz - cfg.full_scale_dbm) / 10.0) * sample_rate_hz
    noise_in_band = noise_per_sample * band.sum() / n
    signal = np.maximum(power - noise_in_band, noise_in_band * 1e-3)
    return 10.0 * np.log10(signal) + cfg.full_scale_dbm


def _log_normal_mass(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """log(Phi(b) - Phi(a)) for a < b, accurate in both tails."""
    upper = a > 0  # there Phi(b) - Phi(a) = Phi(-a) - Phi(-b), which keeps its digits
    low, high = np.where(upper, -b, a), np.where(upper, -a, b)
    log_high, log_low = log_ndtr(high), log_ndtr(low)
    return log_high + np.log1p(-np.exp(np.minimum(log_low - log_high, -1e-12)))


@dataclass(frozen=True)
class GridEstimates:
    ml: np.ndarray  # (n, 2) east/north metres of the most likely grid point
    mean: np.ndarray  # (n, 2) posterior mean
    covariance: np.ndarray  # (n, 2, 2) posterior covariance


class GridLocator:
    """Likelihood of every grid position given the 3 received powers."""

    def __init__(
        self, simulator: CaptureSimulator, spacing_m: float = 500.0, grow_m: float = 0.0
    ) -> None:
        west, east, south, north = simulator.region_local()
        west, east, south, north = west - grow_m, east + grow_m, south - grow_m, north + grow_m
        es = np.arange(west + spacing_m / 2, east, spacing_m)
        ns = np.arange(south + spacing_m / 2, north, spacing_m)
        grid_e, grid_n = np.meshgrid(es, ns)
        self.points = np.stack([grid_e.ravel(), grid_n.ravel()], axis=-1)
        self.gain_db = simulator.path_gain_db(self.points[:, 0], self.points[:, 1]).astype(
            np.float32
        )
        self.tx_range = simulator.config.tx_power_dbm
        self.cell_variance = spacing_m**2 / 12.0

    def locate(
        self, powers_dbm: np.ndarray, sigma_db: np.ndarray | float, chunk: int = 64
    ) -> GridEstimates:
        """Estimates for ``(n, 3)`` received powers with per-capture power error ``sigma_db``."""
        powers = np.asarray(powers_dbm, dtype=np.float32)
        sigmas = np.broadcast_to(np.asarray(sigma_db, dtype=np.float64), (len(powers),))
        ml, mean, cov = [], [], []
        lo, hi = self.tx_range
        for start in range(0, len(powers), chunk):
            p = powers[start : start + chunk]
            s = sigmas[start : start + chunk, None]
            implied = (
                p[:, None, :] - self.gain_db[None, :, :]
            )  # transmit power each receiver implies
            centre = implied.mean(axis=-1)
            sse = ((implied - centre[..., None]) ** 2).sum(axis=-1)
            # Profile likelihood with the transmit power constrained to its range (the ML point).
            clipped = np.clip(centre, lo, hi)
            sse_clipped = sse + 3.0 * (centre - clipped) ** 2
            ml.append(self.points[np.argmin(sse_clipped, axis=1)])
            # Posterior with a uniform prior over positions and transmit power.
            spread = s / math.sqrt(3.0)
            log_post = -sse / (2.0 * s**2) + _log_normal_mass(
                (lo - centre) / spread, (hi - centre) / spread
            )
            log_post -= log_post.max(axis=1, keepdims=True)
            weights = np.exp(log_post)
            weights /= weights.sum(axis=1, keepdims=True)
            m = weights @ self.points
            d = self.points[None, :, :] - m[:, None, :]
            c = np.einsum("nk,nki,nkj->nij", weights, d, d) + np.eye(2) * self.cell_variance
            mean.append(m)
            cov.append(c)
        return GridEstimates(np.concatenate(ml), np.concatenate(mean), np.concatenate(cov))


def weighted_centroid(simulator: CaptureSimulator, powers_dbm: np.ndarray) -> np.ndarray:
    """Receiver positions weighted by linear received power, ``(n, 2)`` east/north metres."""
    linear = 10.0 ** ((powers_dbm - powers_dbm.max(axis=1, keepdims=True)) / 10.0)
    weights = linear / linear.sum(axis=1, keepdims=True)
    sites = np.stack([simulator.rx_east, simulator.rx_north], axis=-1)
    return weights @ sites


def crb_position_m(
    simulator: CaptureSimulator, positions: np.ndarray, sigma_db: float | np.ndarray
) -> np.ndarray:
    """Cramér-Rao bound on RMS position error (metres) at ``(n, 2)`` emitter positions.

    Unknowns: east, north and the transmit power; measurements: the 3 received powers in dB with
    independent Gaussian errors of ``sigma_db`` (one for all, or one per position). Bound =
    sqrt(trace of the position block of the inverse Fisher information). It holds for unbiased
    estimators and ignores the region and transmit-power limits, so it is a reference, not a
    promise.
    """
    n_exp = simulator.config.path_loss_exponent
    de = positions[:, None, 0] - simulator.rx_east[None, :]
    dn = positions[:, None, 1] - simulator.rx_north[None, :]
    d2 = np.maximum(de**2 + dn**2, 100.0)
    factor = -10.0 * n_exp / math.log(10.0)
    gradients = np.stack([factor * de / d2, factor * dn / d2, np.ones_like(de)], axis=-1)  # (n,3,3)
    variance = np.broadcast_to(np.asarray(sigma_db, dtype=float) ** 2, (len(positions),))
    fisher = np.einsum("nri,nrj->nij", gradients, gradients) / variance[:, None, None]
    inverse = np.linalg.pinv(fisher)
    return np.sqrt(np.maximum(inverse[:, 0, 0] + inverse[:, 1, 1], 0.0))
