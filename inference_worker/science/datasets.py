"""Simulated data sets of features and truths, for training and evaluation (seeded, parallel).

A data set is generated in chunks; each chunk has its own seed derived from the data set's seed,
so the result does not depend on how many processes made it.
"""

from __future__ import annotations

import multiprocessing
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from inference_worker.core.domain import clipped_share
from inference_worker.core.features import FeatureParams, analyse
from inference_worker.science.baselines import measured_power_dbm
from inference_worker.science.files import replace_file
from inference_worker.science.network import Network, load_network
from inference_worker.science.simulator import CaptureSimulator, HeldOutCells, SimulatorConfig
from inference_worker.science.world import World

RAW_DB = replace(FeatureParams(), mean_db=0.0, std_db=1.0)
"""Feature parameters that leave the features in dB/Hz (normalization comes later)."""
CHUNK = 250


@dataclass(frozen=True)
class DatasetSpec:
    seed: int
    count: int
    rates_hz: tuple[float, ...]
    rate_weights: tuple[float, ...] | None
    durations_s: tuple[float, float] | tuple[float, ...]
    """(low, high) draws uniformly in between when ``continuous``; else one of the values."""
    continuous_duration: bool
    held_out: bool
    split: HeldOutCells = HeldOutCells()
    randomize_environment: bool = False
    """Draw a new shadowing field (terrain) for every capture. Training does, so the model learns
    shadowing as the unknown it is in a place it has never seen, rather than the terrain of the
    one simulated world (which evaluation then uses, in cells training never saw)."""
    environment_seed: int | None = None
    """The terrain to simulate in (default: the simulator's); ignored when randomized."""
    feature_dtype: str = "float16"
    """float16 halves the memory of large training sets (0.06 dB steps); evaluation uses float32."""
    network: Network | None = None
    """The receivers and region (default: the packaged network file)."""
    config: SimulatorConfig | None = None
    """The nominal simulator configuration (default: the simulator's)."""
    world: World | None = None
    """Draw each capture's world around the nominal one (robust training)."""
    features: FeatureParams = RAW_DB
    """Feature parameters, normalization left out (the model's, with mean 0 and std 1)."""
    baseline_band_hz: float = 12_000.0
    """Band over which the baselines' received power is measured around the tuned frequency."""

    @classmethod
    def cell(
        cls,
        seed: int,
        count: int,
        rate_hz: float,
        duration_s: float,
        *,
        held_out: bool,
        **fields: Any,
    ) -> DatasetSpec:
        """Captures of one sample rate and one length (a cell of an evaluation or calibration);
        ``fields`` sets any other field."""
        return cls(
            seed=seed,
            count=count,
            rates_hz=(rate_hz,),
            rate_weights=None,
            durations_s=(duration_s,),
            continuous_duration=False,
            held_out=held_out,
            **fields,
        )


@dataclass
class Dataset:
    features_db: np.ndarray  # (n, 3, 128, 32) dB/Hz
    truth_m: np.ndarray  # (n, 2) east, north
    rate_hz: np.ndarray  # (n,)
    duration_s: np.ndarray  # (n,)
    power_dbm: np.ndarray  # (n, 3) measured signal power (for the baselines)
    rx_power_dbm: np.ndarray  # (n, 3) true mean received power (after shadowing)
    outside_m: np.ndarray  # (n,) how far the emitter lies outside the region (0 inside)
    clipped: np.ndarray  # (n, 3) share of samples at full scale
    carrier_hz: np.ndarray  # (n, 3) where the features' band was centred
    signal_hz: np.ndarray  # (n, 3) the signal's power centroid
    off_band: np.ndarray  # (n, 3) share of the signal's power outside the band read
    reach_hz: np.ndarray  # (n,) how far the band could move

    def save(self, path: str) -> None:
        """Write the arrays to ``path`` (``.npz``) in one step: an interrupted save leaves no
        file that a later run would take for a cache."""
        replace_file(Path(path), lambda file: np.savez(file, **self.__dict__))

    @classmethod
    def load(cls, path: str) -> Dataset:
        with np.load(path) as data:
            return cls(**{k: data[k] for k in data.files})


def _chunk(args: tuple[DatasetSpec, int, int]) -> Dataset:
    spec, index, count = args
    # Each process is one unit of parallelism: a multi-threaded BLAS under a busy CPU turns the
    # small filterbank product from under a millisecond into hundreds.
    threadpool_limits(1)
    rng = np.random.default_rng([spec.seed, index])
    nominal = CaptureSimulator.of(spec.network or load_network(), spec.config)
    config = nominal.config
    if spec.environment_seed is not None:
        config = replace(config, environment_seed=spec.environment_seed)
    simulator = nominal.with_config(config)
    rows: dict[str, list] = {k: [] for k in Dataset.__annotations__}
    weights = None
    if spec.rate_weights is not None:
        weights = np.asarray(spec.rate_weights) / sum(spec.rate_weights)
    for _ in range(count):
        rate = float(rng.choice(spec.rates_hz, p=weights))
        if spec.continuous_duration:
            low, high = spec.durations_s[:2]
            duration = float(rng.uniform(low, high))
        else:
            duration = float(rng.choice(spec.durations_s))
        if spec.randomize_environment or spec.world is not None:
            drawn = spec.world.draw(rng, config) if spec.world is not None else config
            if spec.randomize_environment:
                drawn = replace(drawn, environment_seed=int(rng.integers(2**31)))
            simulator = nominal.with_config(drawn)
        local = simulator.draw_local(rng, spec.split, spec.held_out)
        capture = simulator.simulate(rng, sample_rate_hz=rate, duration_s=duration, local=local)
        features, band = analyse(capture.iq, rate, spec.features)
        rows["features_db"].append(features.astype(spec.feature_dtype))
        rows["truth_m"].append(local)
        rows["rate_hz"].append(rate)
        rows["duration_s"].append(capture.duration_s)
        rows["power_dbm"].append(
            measured_power_dbm(capture.iq, rate, simulator, min(spec.baseline_band_hz, rate))
        )
        rows["rx_power_dbm"].append(capture.rx_power_dbm)
        rows["outside_m"].append(float(simulator.outside_distance_m(*local)))
        rows["clipped"].append(clipped_share(capture.iq))
        rows["carrier_hz"].append(band.carrier_offset_hz)
        rows["signal_hz"].append(band.signal_offset_hz)
        rows["off_band"].append(band.off_band_share)
        rows["reach_hz"].append(band.reach_hz)
    return Dataset(**{k: np.asarray(v) for k, v in rows.items()})


def generate(
    spec: DatasetSpec,
    processes: int = 2,
    progress: Callable[[int, int, float], None] | None = None,
) -> Dataset:
    """Simulate ``spec.count`` captures and their features; ``progress(done, total, seconds)``."""
    sizes = [min(CHUNK, spec.count - start) for start in range(0, spec.count, CHUNK)]
    jobs = [(spec, index, size) for index, size in enumerate(sizes)]
    parts: list[Dataset] = []
    started = time.monotonic()

    def done(part: Dataset) -> None:
        parts.append(part)
        if progress:
            progress(sum(len(p.rate_hz) for p in parts), spec.count, time.monotonic() - started)

    if processes > 1:
        # Ctrl-C reaches the whole process group: the pool's processes leave it to this one,
        # which stops them (one line from the tool, not a traceback from each process).
        ignore = (signal.signal, (signal.SIGINT, signal.SIG_IGN))
        with multiprocessing.get_context("fork").Pool(processes, *ignore) as pool:
            for part in pool.imap(_chunk, jobs):
                done(part)
    else:
        with threadpool_limits(1):  # as in a pool process; the caller's limits come back after
            for job in jobs:
                done(_chunk(job))
    return concatenate(parts)


def concatenate(parts: Sequence[Dataset]) -> Dataset:
    fields = Dataset.__annotations__
    return Dataset(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in fields})


def print_progress(label: str) -> Callable[[int, int, float], None]:
    """A progress callback printing done/total, rate and time left."""

    def report(done: int, total: int, seconds: float) -> None:
        rate = done / max(seconds, 1e-9)
        left = (total - done) / max(rate, 1e-9)
        print(f"  {label}: {done}/{total} captures, {rate:.0f}/s, ~{left:.0f} s left", flush=True)

    return report
