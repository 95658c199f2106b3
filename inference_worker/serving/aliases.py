"""Registry aliases: the two the service serves, and which names an alias may take.

Aliases (``champion``, ``challenger``) name the registry versions in use; registry stages are
deprecated. MLflow refuses some names with a traceback of its own: they are refused here first,
saying what an alias may be (:func:`~inference_worker.settings_checks.alias_refusal`, which the
settings apply to ``HEIMDALL_MODEL_ALIAS`` too).
"""

from __future__ import annotations

from typing import Any

from inference_worker.settings_checks import (  # callers import it here
    alias_refusal as alias_refusal,
)

CHAMPION = "champion"
CHALLENGER = "challenger"


def served_alias_refusal(settings: Any, alias: str) -> str | None:
    """Why ``alias`` may not be removed (the one the workers serve: a worker starting or
    reloading would find nothing under it), or ``None``."""
    if alias != settings.model_alias:
        return None
    return (
        f"{alias!r} is the alias the workers serve; move it instead "
        f"(models promote VERSION --alias {alias})"
    )
