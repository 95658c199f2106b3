"""Benchmark: what locating one set of KiwiSDR recordings by time differences costs a worker.

One process on one core (BLAS pinned to one thread, freed memory kept as a worker process keeps
it: ``--retain-mb``, 0 for the C library's defaults), synthetic sets of the evaluation's kind
(``inference_worker.science.kiwi_sets``) made before the clock starts: the quirks of real files
left out, so that every set is located, and more than five receivers placed 100-1 200 km apart
(twelve do not fit 300-1 000 km). Each set is timed through the estimator a worker runs for a
TDoA job (:func:`inference_worker.core.tdoa.solve`: reading the files, their time bases, every
pair's correlations and the position search). For each sample rate and receiver count it prints
the median and the range of a set's time, how much of it the correlations took, the peak
of the allocations (numpy's included) while locating the first set, measured apart, and the
median time of the same sets with one receiver's GPS time 30 µs off (``--one-off``, the
default): the worst case, in which five or more receivers are located without each one in turn
(what bounds ``HEIMDALL_TDOA_MAX_RECEIVERS``), and how many sets were not located, then, after a
slash, how many of the one-off sets (their delays fix a line: timed too, as a failing job costs
the worker as much). ``--propagation skywave``: the sets heard at 10 MHz by one hop off a layer
300 km high and located with skywave paths, as a job with ``propagation=skywave`` is (three
receivers' skywave delays fix a line more often). ``--deaf``: the median time of the same sets
with the middle receiver deaf to the emitter (noise of its samples' power instead of them),
which is found once every pair is correlated and left out (the rest located again; a set of
three then fails, two receivers left, and is timed as such).

    python tools/bench_tdoa.py [--sets 5] [--receivers 3 5 12] [--rates 12000 20250]
        [--seconds 30] [--seed 3000] [--no-one-off] [--deaf] [--propagation skywave]
        [--retain-mb 256]
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from unittest import mock

import numpy as np
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inference_worker.cli.arguments import count  # noqa: E402
from inference_worker.core import tdoa  # noqa: E402
from inference_worker.core.contract import Receiver  # noqa: E402
from inference_worker.core.kiwi_wav import read_kiwi_wav  # noqa: E402
from inference_worker.core.tdoa_kinds import PROPAGATIONS, Propagation  # noqa: E402
from inference_worker.core.time_differences import TdoaError  # noqa: E402
from inference_worker.science.kiwi_sets import rewritten, spacing_for, synthetic_set  # noqa: E402
from inference_worker.science.tdoa_faults import ODD_OFFSETS_S, deaf  # noqa: E402
from tools.process_meter import add_retain_mb, retained  # noqa: E402
from tools.requirements import RECORDING_S, run  # noqa: E402


def timed_solve(
    files: Sequence[bytes], stations: Sequence[Receiver], propagation: Propagation = "ground"
) -> tuple[float, float, float]:
    """Seconds for the whole estimate, of them those spent in the pairs' correlations, and 1
    where the set was not located (a job failing as a line costs the worker too), else 0."""
    spent = [0.0]
    correlate = tdoa.pair_delays

    def counted(*args: object, **kwargs: object) -> object:
        t0 = time.perf_counter()
        try:
            return correlate(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            spent[0] += time.perf_counter() - t0

    with mock.patch.object(tdoa, "pair_delays", counted):
        t0 = time.perf_counter()
        try:
            tdoa.solve(files, stations, propagation=propagation)
        except TdoaError:
            return time.perf_counter() - t0, spent[0], 1.0
        return time.perf_counter() - t0, spent[0], 0.0


def one_off(files: Sequence[bytes]) -> list[bytes]:
    """The files with the middle receiver's GPS time the largest odd offset off."""
    victim = len(files) // 2
    shifted = rewritten(read_kiwi_wav(files[victim]), shift_s=max(ODD_OFFSETS_S))
    return [shifted if k == victim else f for k, f in enumerate(files)]


def one_deaf(files: Sequence[bytes]) -> list[bytes]:
    """The files with the middle receiver deaf to the emitter (noise of its samples' power)."""
    victim = len(files) // 2
    return [deaf(f, victim) if k == victim else f for k, f in enumerate(files)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", type=count(1), default=5, help="sets per row")
    parser.add_argument("--receivers", type=count(3), nargs="+", default=[3, 5, 12])
    parser.add_argument(
        "--rates", type=count(1_000, 192_000), nargs="+", default=[12_000, 20_250], help="Hz"
    )
    parser.add_argument("--seconds", type=RECORDING_S, default=30.0, help="each recording's length")
    parser.add_argument("--seed", type=int, default=3000, help="first set's seed")
    parser.add_argument(
        "--one-off",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the sets with one receiver's time off (the worst case)",
    )
    parser.add_argument(
        "--propagation",
        choices=PROPAGATIONS,
        default="ground",
        help="skywave: sets heard by one hop off a layer 300 km high, located with such paths",
    )
    parser.add_argument(
        "--deaf",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also time the sets with one receiver deaf to the emitter (left out once found)",
    )
    add_retain_mb(parser)
    args = parser.parse_args(argv)
    sky = args.propagation == "skywave"
    print(f"freed memory kept: {retained(args.retain_mb)}")

    print(
        f"{'rate':>8} {'rx':>3} {'pairs':>5} {'median s':>9} {'range s':>13} "
        f"{'correlations':>13} {'peak MB':>8} {'one off s':>10} {'failed':>7}"
        + (f" {'one deaf s':>11}" if args.deaf else "")
    )
    with threadpool_limits(limits=1):
        for rate in args.rates:
            for receivers in args.receivers:
                sets = [
                    synthetic_set(
                        np.random.default_rng(args.seed + k),
                        receivers=receivers,
                        seconds=args.seconds,
                        quirks=False,
                        sample_rate_hz=rate,
                        spacing_m=spacing_for(receivers),
                        frequency_hz=10_000_000 if sky else 77_500,
                        layer_height_m=300e3 if sky else 0.0,
                    )
                    for k in range(args.sets)
                ]
                tracemalloc.start()  # on a call of its own: tracing slows every allocation
                timed_solve(
                    sets[0].files, sets[0].stations, args.propagation
                )  # caches filled, as in a worker
                peak_mb = tracemalloc.get_traced_memory()[1] / 1e6
                tracemalloc.stop()
                times = np.array([timed_solve(s.files, s.stations, args.propagation) for s in sets])
                median = float(np.median(times[:, 0]))
                share = float(np.median(times[:, 1] / times[:, 0]))
                off, failed = "-", f"{int(times[:, 2].sum())}"
                if args.one_off:
                    off_times = [
                        timed_solve(one_off(s.files), s.stations, args.propagation) for s in sets
                    ]
                    off = f"{float(np.median([t[0] for t in off_times])):.2f}"
                    failed += f" / {sum(int(t[2]) for t in off_times)}"
                deaf_s = ""
                if args.deaf:
                    deaf_times = [
                        timed_solve(one_deaf(s.files), s.stations, args.propagation)[0]
                        for s in sets
                    ]
                    deaf_s = f" {float(np.median(deaf_times)):>11.2f}"
                print(
                    f"{rate:>8} {receivers:>3} {receivers * (receivers - 1) // 2:>5} "
                    f"{median:>9.2f} {times[:, 0].min():>6.2f}–{times[:, 0].max():<6.2f} "
                    f"{share:>12.0%} {peak_mb:>8.0f} {off:>10} {failed:>7}{deaf_s}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    run(main)
