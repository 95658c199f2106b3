"""The first two stages of ``tools/bench_throughput.py``: the bare pipeline (the worker's maths
in a loop, in as many processes as the worker has) and the worker path (a queue filled by the
producer client, drained by a real worker), with the worker path's printed lines."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np

from inference_worker.cli.processes import cli_process, settings_env, wait_until
from inference_worker.settings import Settings
from tools.bench_stages import JobCounts, drop, own_settings, prepare, ratio_to
from tools.process_meter import CLIENTS, CpuMeter, children, rss_mb, service_roots, tree_cpu_s

# --- stage 1: the bare pipeline ----------------------------------------------------------------
_MODEL: Any = None


def _init_bare(model_dir: str, retain_freed_mb: int) -> None:
    global _MODEL
    from threadpoolctl import threadpool_limits

    # Ctrl-C reaches the whole process group: the pool's processes leave it to the benchmark,
    # which stops them (one line, not a traceback from each process)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    from inference_worker.serving.memory import retain_freed_memory
    from inference_worker.serving.onnx_model import LocalizationModel

    threadpool_limits(1)  # as a worker process is set up
    retain_freed_memory(retain_freed_mb)
    _MODEL = LocalizationModel(Path(model_dir))


def _bare_jobs(args: tuple[list[bytes], float]) -> int:
    from inference_worker.core.capture import decode_npy, iq_digest
    from inference_worker.core.domain import assess, clipped_share
    from inference_worker.core.ellipse import decode_output, describe
    from inference_worker.core.features import analyse

    bodies, rate = args
    meta = _MODEL.metadata
    for body in bodies:
        iq = decode_npy(body)
        iq_digest(iq)
        features, band = analyse(iq, rate, meta.features)  # the worker's maths, quality included
        assess(features, band, clipped_share(iq), meta.features, meta.receiver_ids, meta.domain)
        describe(decode_output(_MODEL.predict(features[None])[0], meta.outputs))
    return len(bodies)


def bare_pipeline(
    settings: Settings, bodies: list[bytes], rate: float, processes: int, rounds: int = 3
) -> tuple[float, float]:
    """Jobs per second of ``processes`` processes running the bare pipeline, and their CPU
    milliseconds per job: medians of ``rounds`` rounds (a round lasts a few seconds, and single
    rounds here vary by ±10 %)."""
    share = [bodies[i::processes] for i in range(processes)]
    context = multiprocessing.get_context("fork")
    rates, cpu_ms = [], []
    init = (str(settings.model_dir), settings.retain_freed_mb)
    with context.Pool(processes, _init_bare, init) as pool:
        pids = [p.pid for p in pool._pool]  # type: ignore[attr-defined]
        pool.map(_bare_jobs, [(b[:4], rate) for b in share])  # warm up
        for _ in range(rounds):
            started, cpu = time.perf_counter(), sum(tree_cpu_s(p) for p in pids)
            done = sum(pool.map(_bare_jobs, [(b, rate) for b in share]))
            rates.append(done / (time.perf_counter() - started))
            cpu_ms.append(1e3 * (sum(tree_cpu_s(p) for p in pids) - cpu) / done)
    return float(np.median(rates)), float(np.median(cpu_ms))


# --- stage 2: the worker path -----------------------------------------------------------------
def worker_path(base: Settings, captures: list, jobs: int, processes: int, log_dir: Path) -> dict:
    from tasks.producer import CaptureProducer

    settings = own_settings(base, "w")
    prepare(settings)
    env = settings_env(settings)
    try:
        with CaptureProducer(settings=settings) as producer:
            for n in range(jobs):
                c = captures[n % len(captures)]
                producer.submit(
                    c.iq,
                    sample_rate_hz=c.sample_rate_hz,
                    frequency_mhz=c.frequency_mhz,
                    receivers=c.receivers,
                )
        meter = CpuMeter({})
        with (
            JobCounts(settings) as counts,
            cli_process(
                ["worker", "--concurrency", str(processes)], log_dir / "worker.log", env
            ) as worker,
        ):
            meter.groups = {"workers": [worker.pid], **service_roots()}
            memory: list[tuple[int, float]] = []  # (jobs done, largest pool process RSS)
            metered_from: list[int] = []  # jobs done when the meter started

            def drained() -> bool:
                done = counts.done()
                if done and not metered_from:  # booted and working: start the CPU meter
                    meter.start()
                    metered_from.append(done)
                pool = children(worker.pid)
                if pool:
                    memory.append((done, max(rss_mb(child) for child in pool)))
                return done >= jobs

            wait_until("the queue drained", drained, 3600, worker, 0.1)
            meter.stop()
            done, rate, batch = counts.summary()
        return {
            "jobs": done,
            "jobs_per_s": rate,
            "batch": batch,
            "cpu": meter,
            "metered_jobs": done - metered_from[0],
            "memory": memory,
        }
    finally:
        drop(settings)


def print_worker_path(found: dict[str, Any], bare: float | None, bare_cpu_ms: float) -> None:
    """The worker path's lines: jobs/s and ratio, CPU per job, the ceiling, pool memory."""
    print(
        f"worker path (producer-filled queue, drained): {found['jobs_per_s']:.1f} jobs/s"
        f"{ratio_to(bare, found['jobs_per_s'])}; jobs per batch {found['batch']:.1f} on average",
        flush=True,
    )
    metered = found["metered_jobs"]
    print(
        f"  CPU ms per job (while draining, boot excluded): {found['cpu'].per_job_ms(metered)}",
        flush=True,
    )
    used = found["cpu"].used
    all_ms = 1e3 * sum(s for n, s in used.items() if n != CLIENTS) / max(metered, 1)
    if bare and not all_ms:
        print("  too few jobs drained while metered to tell the ceiling (give more --jobs)")
    elif bare:
        cores = os.cpu_count() or 1
        print(
            f"  in all {all_ms:.2f} ms CPU per job against the bare pipeline's "
            f"{bare_cpu_ms:.2f}: with every core busy the worker path could reach at most "
            f"{1e3 * cores / all_ms:.0f} jobs/s = {1e3 * cores / all_ms / bare:.2f}x",
            flush=True,
        )
    machine = found["cpu"].machine
    if machine:
        print(
            f"  the machine while draining: cores idle {100 * machine['idle']:.1f} % (I/O wait "
            f"included), kernel interrupt work no process is charged for "
            f"{100 * machine['interrupts']:.1f} %",
            flush=True,
        )
    memory = [m for m in found["memory"] if m[0] > 0]
    if len(memory) >= 2:
        early = next((m for m in memory if m[0] >= found["jobs"] // 10), memory[0])
        print(
            f"  largest pool process RSS: {early[1]:.0f} MB after {early[0]} jobs, "
            f"{memory[-1][1]:.0f} MB after {memory[-1][0]}; peak "
            f"{max(m[1] for m in memory):.0f} MB",
            flush=True,
        )
