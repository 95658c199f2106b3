"""Checks a tool makes at its start, before any work: the optional packages it needs are
installed, and the files it is given are usable."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from inference_worker.science.network import Network


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
