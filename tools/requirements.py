"""What a tool does at its start, before any work: check that the optional packages it needs are
installed and that the files it is given are usable, and set its process up for the work."""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

from inference_worker.cli.arguments import number

if TYPE_CHECKING:
    from inference_worker.science.network import Network

TOOLS_RETAIN_FREED_MB = 256
"""Freed memory a tool's process keeps (the worker's default, ``HEIMDALL_RETAIN_FREED_MB``)."""


RECORDING_S = number(1.0, 600.0)
"""``--seconds`` of the synthetic KiwiSDR recordings a TDoA benchmark makes. Their starts are
staggered by up to 5 s: below 7 s some sets share less than the 2 s of GPS time a set needs
(``HEIMDALL_TDOA_MIN_OVERLAP_S``) and are refused."""

RECORDING_ALL_LOCATED_S = number(7.0, 600.0)
"""``--seconds`` where every set must be taken (a benchmark of submissions)."""


def require(module: str, extra: str, purpose: str) -> None:
    """Exit with a message naming the extra to install when ``module`` is missing, before any
    work is done (not minutes later with a traceback)."""
    if importlib.util.find_spec(module) is None:
        print(
            f"error: {purpose} needs {module}, part of the '{extra}' extra: "
            f"pip install -e '.[{extra}]'",
            file=sys.stderr,
        )
        raise SystemExit(2)


def network_or_exit(path: Path) -> Network:
    """The network file at ``path``, or exit saying what is wrong with it."""
    from inference_worker.science.network import load_network

    try:
        return load_network(path)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def add_capture_size(parser: argparse.ArgumentParser, rate_hz: float, duration_s: float) -> None:
    """``--rate`` and ``--duration`` of the captures a tool makes: a rate the service takes, a
    positive length (:func:`capture_samples` checks the two together)."""
    from inference_worker.core.capture import CaptureLimits

    limits = CaptureLimits()  # the service's own: no capture it would refuse
    rates = number(limits.min_sample_rate_hz, limits.max_sample_rate_hz)
    parser.add_argument("--rate", type=rates, default=rate_hz, help="sample rate, Hz")
    length = number(0.0, above=True)
    parser.add_argument("--duration", type=length, default=duration_s, help="capture length, s")


def capture_samples(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Samples a receiver of ``--rate`` × ``--duration``; a length the service would refuse
    ends the tool saying what it takes."""
    from inference_worker.core.capture import CaptureLimits

    limits = CaptureLimits()
    samples = round(args.rate * args.duration)
    if not limits.min_samples <= samples <= limits.max_samples:
        parser.error(
            f"--rate {args.rate:g} and --duration {args.duration:g} make {samples} samples: the "
            f"service takes {limits.min_samples} to {limits.max_samples} a receiver"
        )
    return samples


def keep_freed_memory() -> None:
    """Keep freed memory for the next captures, as worker processes do (``serving/memory.py``):
    simulating and analysing captures of 0.1-5 MB one after another otherwise faults their
    pages in afresh (a loop of both alone ran 20 % faster with it here; the evaluation and
    the training set's generation, which do more besides, 4-8 %). Processes forked from this
    one inherit the setting."""
    from inference_worker.serving.memory import retain_freed_memory

    retain_freed_memory(TOOLS_RETAIN_FREED_MB)


class Terminated(KeyboardInterrupt):
    """SIGTERM to a tool (``timeout``, a scheduler stopping it): met as Ctrl-C is, so that what
    the tool started is stopped and removed on the way out."""


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def _default_sigterm() -> None:
    """In a forked process (a pool's): SIGTERM ends it, as by default. The tool's handler would
    only set a flag that the process's main thread reads when it next runs Python code: a pool
    process blocked waiting for its next task, with the signal taken by another of its threads,
    never did, and the pool's ``terminate`` waited for it for ever."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run(main: Callable[[], int | None]) -> NoReturn:
    """Run a tool's ``main`` and exit with its status; Ctrl-C ends it with one line and exit
    code 130, SIGTERM with exit code 143, not a traceback, after the processes, queues, keys and
    schemas it started are stopped and removed (a model or a dataset cache it was writing is
    left as it was: :mod:`inference_worker.science.files`)."""
    signal.signal(signal.SIGTERM, _terminated)
    os.register_at_fork(after_in_child=_default_sigterm)
    try:
        status = main()
    except Terminated:
        print("\nterminated", file=sys.stderr)
        raise SystemExit(143) from None
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        raise SystemExit(130) from None
    raise SystemExit(status)
