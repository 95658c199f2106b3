"""What a tool does at its start, before any work: check that the optional packages it needs are
installed and that the files it is given are usable, and set its process up for the work."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from inference_worker.science.network import Network

TOOLS_RETAIN_FREED_MB = 256
"""Freed memory a tool's process keeps (the worker's default, ``HEIMDALL_RETAIN_FREED_MB``)."""


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


def keep_freed_memory() -> None:
    """Keep freed memory for the next captures, as worker processes do (``serving/memory.py``):
    simulating and analysing captures of 0.1-5 MB one after another otherwise faults their
    pages in afresh (a loop of both alone ran 20 % faster with it here; the evaluation and
    the training set's generation, which do more besides, 4-8 %). Processes forked from this
    one inherit the setting."""
    from inference_worker.serving.memory import retain_freed_memory

    retain_freed_memory(TOOLS_RETAIN_FREED_MB)


def run(main: Callable[[], int | None]) -> NoReturn:
    """Run a tool's ``main`` and exit with its status; Ctrl-C ends it with one line and exit
    code 130, not a traceback (a model or a dataset cache it was writing is left as it was:
    :mod:`inference_worker.science.files`)."""
    try:
        status = main()
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        raise SystemExit(130) from None
    raise SystemExit(status)
