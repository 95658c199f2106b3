"""Write simulated captures of emitters at known positions, as a deployment would record them.

A stand-in for the captures a deployment records of transmitters at known positions (see
:mod:`inference_worker.science.known_captures`): ``.npy`` files and ``captures.csv`` in the form
``tools/recalibrate_model.py --captures`` reads. The world is the simulator's, changed by one of
the evaluation's stress conditions (``--condition propagation``: shadowing 9 dB, path-loss
exponent 3.5), in one terrain of its own (``--terrain``), so a calibration set and a check set
of the same deployment differ only in ``--seed``.

    python tools/simulate_known_captures.py --condition propagation --count 600 --seed 1 \\
        --out var/known/calibration
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inference_worker.cli.arguments import count  # noqa: E402
from inference_worker.science.known_captures import write_known_captures  # noqa: E402
from inference_worker.science.network import RECEIVERS_FILE  # noqa: E402
from inference_worker.science.simulator import CaptureSimulator, SimulatedCapture  # noqa: E402
from inference_worker.science.stress import CONDITIONS  # noqa: E402
from tools.requirements import (  # noqa: E402
    add_capture_size,
    capture_samples,
    keep_freed_memory,
    network_or_exit,
    run,
)

TERRAIN = 9_000
"""Default terrain: none of training's, the evaluation's or the calibration's."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", type=Path, default=RECEIVERS_FILE)
    parser.add_argument(
        "--condition",
        choices=[c.name for c in CONDITIONS],
        default="nominal",
        help="the world of the deployment: the simulator's, changed by this stress condition",
    )
    parser.add_argument("--count", type=count(1), default=400)
    add_capture_size(parser, 12_000.0, 0.5)
    parser.add_argument("--seed", type=count(0), default=1)
    parser.add_argument("--terrain", type=count(0), default=TERRAIN, help="shadowing field's seed")
    parser.add_argument("--out", type=Path, required=True, help="folder to write into")
    args = parser.parse_args()
    capture_samples(parser, args)
    keep_freed_memory()
    network = network_or_exit(args.network)
    simulator = CaptureSimulator.of(network)
    condition = next(c for c in CONDITIONS if c.name == args.condition)
    west, east, south, north = simulator.region_local()
    grown = (east - west + 2 * condition.grow_m) * (north - south + 2 * condition.grow_m)
    config = condition.config(simulator.config, (east - west) * (north - south) / grown)
    simulator = simulator.with_config(replace(config, environment_seed=args.terrain))
    rng = np.random.default_rng(args.seed)
    started = time.monotonic()

    def captures() -> Iterator[tuple[np.ndarray, float, float, float, float, Sequence[str]]]:
        for index in range(args.count):
            capture: SimulatedCapture = simulator.simulate(
                rng, sample_rate_hz=args.rate, duration_s=args.duration
            )
            yield (
                capture.iq,
                capture.sample_rate_hz,
                capture.frequency_mhz,
                capture.lat,
                capture.lon,
                capture.receivers,
            )
            if (index + 1) % 100 == 0 or index + 1 == args.count:
                seconds = time.monotonic() - started
                left = seconds / (index + 1) * (args.count - index - 1)
                print(
                    f"  {index + 1}/{args.count} captures ({seconds:.0f} s; ~{left:.0f} s left)",
                    flush=True,
                )

    path = write_known_captures(args.out, captures())
    print(f"wrote {args.count} captures ({condition.name}: {condition.description}) and {path}")
    return 0


if __name__ == "__main__":
    run(main)
