"""Registry aliases: the two the service serves, and which names an alias may take.

Aliases (``champion``, ``challenger``) name the registry versions in use; registry stages are
deprecated. MLflow refuses some names with a traceback of its own: they are refused here first,
saying what an alias may be.
"""

from __future__ import annotations

import re
from typing import Any

CHAMPION = "champion"
CHALLENGER = "challenger"
ALIAS_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What MLflow takes as an alias (ASCII here), no longer than a job's model reference."""
RESERVED_ALIAS = re.compile(r"latest|v[0-9]+", re.IGNORECASE)
"""Names MLflow keeps for itself: the newest version, and a version by number."""


def alias_refusal(alias: str) -> str | None:
    """Why ``alias`` cannot name a version, or ``None``."""
    if not ALIAS_PATTERN.fullmatch(alias) or alias.isdigit():
        return f"alias {alias!r}: an alias is 1-64 of A-Z a-z 0-9 _ - (not a number)"
    if RESERVED_ALIAS.fullmatch(alias):
        return f"alias {alias!r} is reserved by the registry (latest, v<number>)"
    return None


def served_alias_refusal(settings: Any, alias: str) -> str | None:
    """Why ``alias`` may not be removed (the one the workers serve: a worker starting or
    reloading would find nothing under it), or ``None``."""
    if alias != settings.model_alias:
        return None
    return (
        f"{alias!r} is the alias the workers serve; move it instead "
        f"(models promote VERSION --alias {alias})"
    )
