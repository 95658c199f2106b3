"""Benchmark: what the features and the quality checks cost per capture, by sample rate and length.

One process set up as a worker process is (BLAS pinned to one thread; freed memory kept, as
``HEIMDALL_RETAIN_FREED_MB`` sets it), the served model's feature parameters, simulated
captures of the packaged network (a different capture each call, so nothing is cached but what
the worker caches too). For each kind of capture it prints the median and the 10th-90th
percentiles of the features' time, the quality checks' time (clipping scan and domain check),
the peak of numpy's allocations, and the ratio of the features' median to that of 12 kHz × 1 s;
then the same for a fixed band (the band not following the carrier), for comparison.
``--longest`` measures instead the longest capture the service accepts
(``HEIMDALL_MAX_SAMPLES_PER_RECEIVER``) at rates from 12 kHz to the highest accepted: the
dearest request a worker can be handed, by rate.

    python tools/bench_features.py [--calls 60] [--retain-mb 256] [--model DIR] [--longest]
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inference_worker.cli.arguments import count  # noqa: E402
from inference_worker.core.contract import ModelError, load_metadata  # noqa: E402
from inference_worker.core.domain import assess, clipped_share  # noqa: E402
from inference_worker.core.features import FeatureParams, analyse  # noqa: E402
from inference_worker.science.simulator import CaptureSimulator  # noqa: E402
from inference_worker.settings import load_settings  # noqa: E402
from tools.process_meter import add_retain_mb, retained  # noqa: E402
from tools.requirements import run  # noqa: E402

KINDS = (
    ("12 kHz × 1 s", 12_000.0, 12_000),
    ("12 kHz × 0.25 s", 12_000.0, 3_000),
    ("48 kHz × 1 s", 48_000.0, 48_000),
    ("96 kHz × 1 s", 96_000.0, 96_000),
    ("192 kHz × 0.25 s", 192_000.0, 48_000),
    ("192 kHz × 1 s", 192_000.0, 192_000),
    ("10 MHz × 480 000 samples (the largest accepted)", 10_000_000.0, 480_000),
)
REFERENCE = "12 kHz × 1 s"
DISTINCT = 8
"""Distinct captures of each kind, taken in turn."""
LONGEST_RATES = (12e3, 24e3, 48e3, 66e3, 96e3, 132e3, 192e3, 384e3, 1e6, 2.4e6, 10e6)
"""Rates at which ``--longest`` measures the longest accepted capture: each decimation factor's
regime (none below ~33 kHz, small factors to ~300 kHz, large ones above)."""


def captures(
    rate: float, samples: int, rng: np.random.Generator, distinct: int = DISTINCT
) -> list[np.ndarray]:
    """``distinct`` simulated captures of ``samples`` per receiver at ``rate``."""
    simulator = CaptureSimulator()
    return [
        simulator.simulate(rng, sample_rate_hz=rate, duration_s=samples / rate).iq
        for _ in range(distinct)
    ]


def longest_kinds() -> list[tuple[str, float, int]]:
    """The longest accepted capture at each of ``LONGEST_RATES`` the service accepts."""
    settings = load_settings()
    samples = settings.max_samples_per_receiver
    low, high = settings.min_sample_rate_hz, settings.max_sample_rate_hz
    rates = [r for r in LONGEST_RATES if low <= r < high] + [high]
    return [(f"{rate_label(rate)} × {samples} samples", rate, samples) for rate in rates]


def rate_label(rate: float) -> str:
    return f"{rate / 1e6:g} MHz" if rate >= 1e6 else f"{rate / 1e3:g} kHz"


def measure(iqs: list[np.ndarray], rate: float, params: FeatureParams, meta, calls: int) -> dict:
    """Median and 10th-90th percentiles (ms) of the features and of the quality checks, and the
    peak of numpy's allocations (MB) during one call of each."""
    for iq in iqs[:2]:  # warm up: the filters and filterbanks the worker caches
        analyse(iq, rate, params)
    features_ms, quality_ms = [], []
    for call in range(calls):
        iq = iqs[call % len(iqs)]
        started = time.perf_counter()
        features, band = analyse(iq, rate, params)
        between = time.perf_counter()
        assess(features, band, clipped_share(iq), params, meta.receiver_ids, meta.domain)
        quality_ms.append(1e3 * (time.perf_counter() - between))
        features_ms.append(1e3 * (between - started))
    tracemalloc.start()
    features, band = analyse(iqs[0], rate, params)
    assess(features, band, clipped_share(iqs[0]), params, meta.receiver_ids, meta.domain)
    peak_mb = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    return {"features": features_ms, "quality": quality_ms, "peak_mb": peak_mb}


def spread(values: list[float]) -> str:
    p10, p50, p90 = np.percentile(values, [10, 50, 90])
    return f"{p50:6.2f} ms ({p10:.2f}-{p90:.2f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=count(1), default=60, help="calls per kind of capture")
    add_retain_mb(parser)
    parser.add_argument("--model", type=Path, default=ROOT / "inference_worker/models/reference")
    parser.add_argument(
        "--longest",
        action="store_true",
        help="the longest accepted capture at rates from 12 kHz to the highest accepted",
    )
    args = parser.parse_args()
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)  # as a worker process is set up
    kept = retained(args.retain_mb)
    try:
        meta = load_metadata(args.model, verify=False)
    except ModelError as exc:
        parser.error(str(exc))
    following = meta.features
    fixed = replace(following, follow_carrier_hz=0.0)
    print(
        f"model {meta.name} {meta.version}; one thread; freed memory kept: "
        f"{kept}; "
        f"{args.calls} calls per kind, median (10th-90th percentile)",
        flush=True,
    )
    rng = np.random.default_rng(11)
    kinds = longest_kinds() if args.longest else KINDS
    distinct = 2 if args.longest else DISTINCT
    for label, params in (("band following the carrier", following), ("fixed band", fixed)):
        print(f"\n{label} (follow_carrier_hz {params.follow_carrier_hz:g}):")
        reference = None
        for name, rate, samples in kinds:
            iqs = captures(rate, samples, rng, distinct)
            found = measure(iqs, rate, params, meta, args.calls)
            median = float(np.median(found["features"]))
            reference = median if name == REFERENCE else reference
            ratio = f"{median / reference:5.2f}x {REFERENCE}" if reference else ""
            print(
                f"  {name:<48} features {spread(found['features'])}  {ratio}\n"
                f"  {'':<48} quality  {spread(found['quality'])}  "
                f"peak allocations {found['peak_mb']:.1f} MB",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    run(main)
