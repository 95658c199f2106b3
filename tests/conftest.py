"""Shared fixtures: simulated captures and the reference model folder."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from inference_worker.science.simulator import CaptureSimulator, SimulatedCapture
from inference_worker.settings import CENTROID_MODEL_DIR, DEFAULT_MODEL_DIR


@pytest.fixture(scope="session")
def simulator() -> CaptureSimulator:
    return CaptureSimulator()


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """Random numbers seeded by the test's id: each test draws its own, the same every run."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def capture(simulator: CaptureSimulator, rng: np.random.Generator) -> SimulatedCapture:
    """A 1 s capture at 12 kHz (a different one in every test, the same in every run)."""
    return simulator.simulate(rng, sample_rate_hz=12_000.0, duration_s=1.0)


@pytest.fixture(scope="session")
def model_dir():
    return DEFAULT_MODEL_DIR


@pytest.fixture(scope="session")
def centroid_model_dir():
    """The hand-built centroid model (any model of the contract must work)."""
    return CENTROID_MODEL_DIR
