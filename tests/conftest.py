"""Shared fixtures: simulated captures and the reference model folder."""

from __future__ import annotations

import numpy as np
import pytest

from inference_worker.settings import CENTROID_MODEL_DIR, DEFAULT_MODEL_DIR
from inference_worker.simulator import CaptureSimulator, SimulatedCapture


@pytest.fixture(scope="session")
def simulator() -> CaptureSimulator:
    return CaptureSimulator()


@pytest.fixture
def capture(simulator: CaptureSimulator) -> SimulatedCapture:
    """A fresh 1 s capture at 12 kHz (a different one in every test)."""
    return simulator.simulate(np.random.default_rng(), sample_rate_hz=12_000.0, duration_s=1.0)


@pytest.fixture(scope="session")
def model_dir():
    return DEFAULT_MODEL_DIR


@pytest.fixture(scope="session")
def centroid_model_dir():
    """The hand-built centroid model (any model of the contract must work)."""
    return CENTROID_MODEL_DIR
