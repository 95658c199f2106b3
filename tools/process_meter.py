"""CPU and memory of this machine's processes, read from ``/proc`` (Linux): what the throughput
benchmark meters its stages with; and the freed memory a benchmark's own process keeps, as a
worker process keeps it.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
CLIENTS = "benchmark (clients)"
"""The meter's name for this process's own CPU (the load it generates, not the service's)."""


def _stat(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def children(pid: int) -> list[int]:
    """The direct children of a process (none once it is gone)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and all its descendants, living or reaped."""
    try:
        fields = _stat(pid)
    except OSError:
        return 0.0
    own = sum(int(v) for v in fields[11:15]) / TICKS  # utime, stime, cutime, cstime
    return own + sum(tree_cpu_s(child) for child in children(pid))


def faulted_mb(pid: int) -> float:
    """Memory one process has faulted in so far (its minor page faults, MB), 0 once it is gone:
    what it took afresh from the system rather than reusing what it had freed."""
    try:
        return int(_stat(pid)[7]) * PAGE_BYTES / 2**20
    except OSError:
        return 0.0


def rss_mb(pid: int) -> float:
    """Resident memory of one process (MB), 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def pids_of(command_part: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if command_part in command:
                found.append(int(entry.name))
    return found


def service_roots() -> dict[str, list[int]]:
    """The top processes of RabbitMQ, Redis and PostgreSQL (their children are counted in)."""
    postgres = [
        p for p in pids_of("bin/postgres") if "-D" in Path(f"/proc/{p}/cmdline").read_text()
    ]
    return {
        "RabbitMQ": pids_of("beam.smp"),
        "Redis": pids_of("redis-server"),
        "PostgreSQL": postgres,
    }


def machine_times() -> dict[str, int]:
    """The machine's CPU time so far, all cores together (ticks), by kind: ``idle`` (I/O wait
    included), ``interrupts`` (the kernel's interrupt and softirq work, which no process is
    charged for: on loopback, most of the network stack) and ``total``."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return {
        "idle": idle + iowait,
        "interrupts": irq + softirq,
        "total": user + nice + system + idle + iowait + irq + softirq + steal,
    }


@dataclass
class CpuMeter:
    """CPU seconds per process group between :meth:`start` and :meth:`stop`, and the shares of
    the machine's time that were idle or interrupt work (:attr:`machine`)."""

    groups: dict[str, list[int]]
    before: dict[str, float] = field(default_factory=dict)
    used: dict[str, float] = field(default_factory=dict)
    machine_before: dict[str, int] = field(default_factory=dict)
    machine: dict[str, float] = field(default_factory=dict)

    def _now(self) -> dict[str, float]:
        now = {name: sum(tree_cpu_s(p) for p in pids) for name, pids in self.groups.items()}
        now[CLIENTS] = sum(int(v) for v in _stat(os.getpid())[11:13]) / TICKS
        return now

    def start(self) -> None:
        self.before = self._now()
        self.machine_before = machine_times()

    def stop(self) -> None:
        after = self._now()
        self.used = {name: after[name] - self.before.get(name, 0.0) for name in after}
        now = machine_times()
        spent = {kind: now[kind] - self.machine_before.get(kind, 0) for kind in now}
        total = max(spent["total"], 1)
        self.machine = {kind: spent[kind] / total for kind in ("idle", "interrupts")}

    def per_job_ms(self, jobs: int) -> str:
        return ", ".join(f"{name} {1e3 * s / max(jobs, 1):.2f}" for name, s in self.used.items())


def add_retain_mb(parser: argparse.ArgumentParser) -> None:
    """``--retain-mb``: the freed memory a benchmark's process keeps, a worker's by default."""
    from inference_worker.settings import Settings

    parser.add_argument(
        "--retain-mb",
        type=int,
        default=Settings.model_fields["retain_freed_mb"].default,
        help="freed memory kept, as a worker process keeps it (0: the C library's defaults)",
    )


def retained(megabytes: int) -> str:
    """Keep ``megabytes`` of freed memory in this process as a worker does, and say what it
    keeps (glibc only)."""
    from inference_worker.serving.memory import retain_freed_memory

    kept = retain_freed_memory(megabytes)
    return f"{megabytes} MB" if kept else "no (the C library defaults)"
