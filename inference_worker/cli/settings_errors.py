"""Settings that cannot be loaded, told to an operator: the environment variable, not pydantic's
field, and never a secret."""

from __future__ import annotations

import re

from pydantic import ValidationError

from inference_worker.urls import redact_secrets


def describe_invalid(exc: ValidationError) -> list[str]:
    """One line per invalid setting, named by the environment variable that sets it, with the
    plain value given; pydantic names fields, which nobody sets."""
    lines = []
    for error in exc.errors(include_url=False):
        message = error["msg"].removeprefix("Value error, ")
        if not error["loc"]:  # a check across settings names them itself
            lines.append(f"invalid settings: {message}")
            continue
        field, *inner = (str(part) for part in error["loc"])
        name = f"HEIMDALL_{field.upper()}" + "".join(f"[{part}]" for part in inner)
        given = error.get("input")  # a plain value; an API key's entry (a secret) is not shown
        if isinstance(given, str):  # a URL's credentials are not repeated either
            given = redact_secrets(given)
        shown = f" (got {given!r:.60})" if isinstance(given, str | int | float) else ""
        lines.append(f"invalid setting {name}: {message}{shown}")
    return lines


def describe_unparsable(exc: Exception) -> str:
    """A value pydantic-settings could not even parse (the JSON of a list): the variable named
    as it is set, and the parser's reason."""
    text = re.sub(
        r'error parsing value for field "(\w+)" from source "\w+"',
        lambda found: f"HEIMDALL_{found.group(1).upper()} is not valid JSON",
        str(exc),
    )
    cause = exc.__cause__
    return f"invalid settings: {text}" + (f" ({cause})" if cause else "")
