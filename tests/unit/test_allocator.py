"""A worker process keeps freed memory for its next batch instead of faulting it in again."""

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="the allocator setting is glibc's"
)

# A batch like a worker's at 192 kHz: sixteen 1.2 MB arrays, touched, then all freed.
_PROBE = """
import resource, sys
import numpy as np
from inference_worker.serving.memory import retain_freed_memory

took = retain_freed_memory(int(sys.argv[1]))

def batch():
    arrays = [np.ones(150_000) for _ in range(16)]
    return sum(float(a[-1]) for a in arrays)

for _ in range(3):
    batch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    batch()
print(took, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 10)
"""


def _faults_per_batch(retain_mb: int) -> tuple[bool, int]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(retain_mb)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.split()
    return out[0] == "True", int(out[1])


def test_retained_memory_serves_the_next_batch_without_page_faults():
    took, faults = _faults_per_batch(256)
    assert took
    assert faults < 100  # a batch touches 4 700 fresh pages when the memory is given back


def test_zero_keeps_the_c_library_defaults():
    took, faults = _faults_per_batch(0)
    assert not took
    assert faults > 1000
