"""Following each receiver's carrier vs widening the band: error of the measured signal power.

Weak signals (transmit power -30..0 dBm, so many captures sit within 10 dB of the noise) at
48 kHz × 0.3 s, with and without ±50 ppm oscillator errors; the signal power read back from the
features (band power minus the known noise) against the true received power.

    python tools/compare_band_following.py [--count 300] [--seed 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataclasses import replace  # noqa: E402

import numpy as np  # noqa: E402

from inference_worker.cli.arguments import count, number  # noqa: E402
from inference_worker.core.domain import band_power_dbfs  # noqa: E402
from inference_worker.core.features import FeatureParams, analyse  # noqa: E402
from inference_worker.science.simulator import CaptureSimulator, SimulatorConfig  # noqa: E402
from tools.requirements import run  # noqa: E402

BASE = replace(FeatureParams(), mean_db=0.0, std_db=1.0)
BANDS = {
    "follow": BASE,
    "fixed": replace(BASE, follow_carrier_hz=0.0),
    "wide": replace(BASE, follow_carrier_hz=0.0, bandwidth_hz=12_000.0 + 2 * 7_500.0),
}


def compare(ppm: float, captures: int, rng: np.random.Generator, rate: float, duration: float):
    """Per way of reading the band: the error (dB) of each receiver's signal power; and each
    receiver's SNR in a 12 kHz band."""
    sim = CaptureSimulator(
        config=replace(SimulatorConfig(), oscillator_ppm=ppm, tx_power_dbm=(-30.0, 0.0))
    )
    cfg = sim.config
    errors: dict[str, list[np.ndarray]] = {name: [] for name in BANDS}
    snr = []
    for _ in range(captures):
        capture = sim.simulate(rng, sample_rate_hz=rate, duration_s=duration)
        for name, params in BANDS.items():
            features, _ = analyse(capture.iq, rate, params)
            total = 10 ** (band_power_dbfs(features, params) / 10)
            noise = 10 ** ((cfg.noise_dbm_per_hz - cfg.full_scale_dbm) / 10) * params.bandwidth_hz
            signal = np.maximum(total - noise, noise * 0.01)
            measured = 10 * np.log10(signal) + cfg.full_scale_dbm
            errors[name].append(measured - np.array(capture.rx_power_dbm))
        snr.append(np.array(capture.rx_power_dbm) - (cfg.noise_dbm_per_hz + 10 * np.log10(12000)))
    return {name: np.concatenate(e) for name, e in errors.items()}, np.concatenate(snr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=count(), default=300, help="captures per oscillator case")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--rate", type=number(24_000.0), default=48_000.0, help="Hz")
    parser.add_argument("--duration", type=number(0.05), default=0.3, help="seconds")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    for ppm in (0.0, 50.0):
        started = time.monotonic()
        errors, snr = compare(ppm, args.count, rng, args.rate, args.duration)
        weak = snr < 10
        for name, e in errors.items():
            print(
                f"ppm {ppm:>4}: {name:<6} median |error| {np.median(np.abs(e)):.2f} dB, "
                f"p90 {np.percentile(np.abs(e), 90):.2f} dB; SNR<10 dB: median "
                f"{np.median(np.abs(e[weak])):.2f} dB (n={weak.sum()})"
            )
        print(f"  ({args.count} captures in {time.monotonic() - started:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    run(main)
