"""Argument types of the command line: numbers refused by argparse, naming the bound, before
any command runs."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import NoReturn


def number(least: float, most: float = math.inf, *, above: bool = False) -> Callable[[str], float]:
    """An argparse ``type``: a finite number from ``least`` (excluded with ``above``) to
    ``most``; anything else is refused with the range it must lie in."""
    bound = f"more than {_shown(least)}" if above else f"at least {_shown(least)}"
    if math.isfinite(most):
        bound = (
            f"from {_shown(least)} to {_shown(most)}"
            if not above
            else f"{bound} and at most {_shown(most)}"
        )

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        inside = (value > least if above else value >= least) and value <= most
        if not (math.isfinite(value) and inside):
            raise argparse.ArgumentTypeError(f"{text} is out of range: give a number {bound}")
        return value

    return parse


def _shown(bound: float) -> str:
    """A bound as written: whole ones in full (31536000, not 3.1536e+07)."""
    return str(int(bound)) if bound == int(bound) else f"{bound:g}"


def count(least: int = 1, most: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: a whole number of at least ``least`` (and at most ``most``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{text} is too few: give at least {least}")
        if most is not None and value > most:
            raise argparse.ArgumentTypeError(f"{text} is too many: give at most {most}")
        return value

    return parse


PORT = count(1, 65535)
"""A TCP port to listen on."""


def count_range(least: int, most: int) -> Callable[[str], tuple[int, int]]:
    """An argparse ``type``: ``N`` or ``LO-HI``, whole numbers from ``least`` to ``most``, low
    first; returned as ``(LO, HI)``."""

    def parse(text: str) -> tuple[int, int]:
        low, _, high = text.partition("-")
        try:
            first, last = int(low), int(high or low)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected N or LO-HI, got {text!r}") from None
        if not least <= first <= last <= most:
            raise argparse.ArgumentTypeError(
                f"{text!r} must lie within {least}-{most}, the lower first"
            )
        return first, last

    return parse


def fail(message: str) -> NoReturn:
    """End a command that cannot go on with what it was given: ``error: MESSAGE``, exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)
