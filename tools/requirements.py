"""Checks, at a tool's start, that the optional packages it needs are installed."""

from __future__ import annotations

import importlib.util
import sys


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
