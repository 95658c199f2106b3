"""A benchmark stopped half way (Ctrl-C, or SIGTERM from ``timeout`` or a scheduler) ends with one
line and its exit code, its shim and worker stopped and its queue, keys and schema removed: its
client threads went on against the stopped shim before, printing a traceback each, and the log
of every process it had started was printed as if it had failed."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[2]


def bench_schemas(engine: sa.Engine) -> set[str]:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'bench\\_s%'")
        )
        return {row[0] for row in rows}


@pytest.mark.parametrize(
    ("signum", "code", "line"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
)
def test_a_benchmark_stopped_half_way_ends_quietly_and_leaves_nothing(
    settings, engine, redis_client, signum, code, line
):
    before = bench_schemas(engine)
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "tools" / "bench_throughput.py")]
        + ["--stages", "service", "--jobs", "100000", "--clients", "4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (bench_schemas(engine) - before):  # the stage has begun
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the service stage did not begin"
        time.sleep(0.2)
    (schema,) = bench_schemas(engine) - before
    time.sleep(6.0)  # its shim and worker up, its clients submitting
    process.send_signal(signum)
    out, err = process.communicate(timeout=120)

    assert process.returncode == code, err
    assert err.strip() == line, err
    assert "service (shim + workers" not in out  # cut short, not finished
    assert schema not in bench_schemas(engine)
    tag = schema.removeprefix("bench_")
    assert not list(redis_client.scan_iter(match=f"heimdall-bench:{tag}:*", count=1000))
