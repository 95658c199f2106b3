"""A worker or shim process keeps freed memory for its next batch or upload instead of faulting
it in again, in its main thread and in the others."""

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="the allocator setting is glibc's"
)

# A batch like a worker's at 192 kHz: sixteen 1.2 MB arrays, touched, then all freed.
# Or, in a thread of its own, what a shim thread holds while it checks a 12-receiver TDoA set:
# four 24 MB arrays (each under the 32 MB served from the heap), past a thread arena's 64 MB.
_PROBE = """
import resource, sys, threading
import numpy as np
from inference_worker.serving.memory import retain_freed_memory

took = retain_freed_memory(int(sys.argv[1]))
sizes = [3_000_000] * 4 if sys.argv[2] == "thread" else [150_000] * 16

def batch():
    arrays = [np.ones(size) for size in sizes]
    return sum(float(a[-1]) for a in arrays)

def serve():
    for _ in range(3):
        batch()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        batch()
    print(took, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 10)

if sys.argv[2] == "thread":
    thread = threading.Thread(target=serve)
    thread.start()
    thread.join()
else:
    serve()
"""


def _faults_per_batch(retain_mb: int, where: str = "main") -> tuple[bool, int]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(retain_mb), where],
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


def test_a_thread_keeps_freed_memory_past_its_own_arena():
    """A thread's own arena gave a heap back whole as soon as it was empty, whatever the trim
    threshold: each of a shim thread's large uploads faulted its memory in again."""
    took, faults = _faults_per_batch(256, "thread")
    assert took
    assert faults < 100  # 1 499 a batch when the thread had an arena of its own
