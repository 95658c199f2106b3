"""Following each receiver's carrier vs widening the band: error of the measured signal power.

Weak signals (transmit power -30..0 dBm, so many captures sit within 10 dB of the noise) at
48 kHz × 0.3 s, with and without ±50 ppm oscillator errors; the signal power read back from the
features (band power minus the known noise) against the true received power.

    python tools/compare_band_following.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataclasses import replace  # noqa: E402

import numpy as np  # noqa: E402

from inference_worker.core.domain import band_power_dbfs  # noqa: E402
from inference_worker.core.features import FeatureParams, analyse  # noqa: E402
from inference_worker.science.simulator import CaptureSimulator, SimulatorConfig  # noqa: E402

base = replace(FeatureParams(), mean_db=0.0, std_db=1.0)
follow = base
fixed = replace(base, follow_carrier_hz=0.0)
wide = replace(base, follow_carrier_hz=0.0, bandwidth_hz=12_000.0 + 2 * 7_500.0)
rng = np.random.default_rng(3)
for ppm in (0.0, 50.0):
    sim = CaptureSimulator(
        config=replace(SimulatorConfig(), oscillator_ppm=ppm, tx_power_dbm=(-30.0, 0.0))
    )
    cfg = sim.config
    errs = {k: [] for k in ("follow", "fixed", "wide")}
    snr = []
    for _ in range(300):
        c = sim.simulate(rng, sample_rate_hz=48_000.0, duration_s=0.3)
        for name, p in (("follow", follow), ("fixed", fixed), ("wide", wide)):
            f, _ = analyse(c.iq, 48_000.0, p)
            total = 10 ** (band_power_dbfs(f, p) / 10)
            noise = 10 ** ((cfg.noise_dbm_per_hz - cfg.full_scale_dbm) / 10) * p.bandwidth_hz
            sig = np.maximum(total - noise, noise * 0.01)
            errs[name].append(10 * np.log10(sig) + cfg.full_scale_dbm - np.array(c.rx_power_dbm))
        snr.append(np.array(c.rx_power_dbm) - (cfg.noise_dbm_per_hz + 10 * np.log10(12000)))
    snr = np.concatenate(snr)
    for name, e in errs.items():
        e = np.concatenate(e)
        weak = snr < 10
        print(
            f"ppm {ppm:>4}: {name:<6} median |error| {np.median(np.abs(e)):.2f} dB, p90 {np.percentile(np.abs(e), 90):.2f} dB; SNR<10 dB: median {np.median(np.abs(e[weak])):.2f} dB (n={weak.sum()})"
        )
