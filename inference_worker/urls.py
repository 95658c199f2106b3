"""Service URLs as operators write them: PostgreSQL's common forms, the api's address (an IPv6
one in brackets), and credentials kept out of what is printed."""

from __future__ import annotations

import re

URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@")


def redact_secrets(text: str) -> str:
    """``text`` with the credentials of any URL in it replaced (for logs and error bodies)."""
    return URL_CREDENTIALS.sub(r"\g<scheme>***@", text)


def redact_url(url: str) -> str:
    """A URL safe to print: the password, if any, replaced (the user too, where SQLAlchemy
    cannot read the URL)."""
    import sqlalchemy as sa  # loaded when first needed: not every caller of this module uses it

    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except (sa.exc.ArgumentError, ValueError):  # no URL, or a port that is no number
        return redact_secrets(url)


_POSTGRESQL_SCHEME = re.compile(r"^(postgres|postgresql)(\+[\w]+)?://", re.IGNORECASE)


def postgresql_url(url: str, *, driver_required: bool) -> str:
    """A PostgreSQL URL in the driver the service installs (psycopg2).

    ``postgresql://`` and libpq's ``postgres://`` are the forms operators copy from elsewhere;
    SQLAlchemy 2.1 takes the first for psycopg 3, which is not installed, and knows no
    ``postgres`` at all. Both mean ``postgresql+psycopg2://``. The job store speaks psycopg2
    itself (``driver_required``), so another named driver is refused; any other URL (SQLite or
    an MLflow server for the registry) is left as it is.
    """
    found = _POSTGRESQL_SCHEME.match(url)
    if found is None:
        if driver_required:
            raise ValueError("must be a PostgreSQL URL (postgresql://user@host:5432/database)")
        return url
    driver = (found.group(2) or "+psycopg2").lower()
    if driver != "+psycopg2":
        raise ValueError(
            f"the driver {driver[1:]!r} is not installed: the service talks to PostgreSQL "
            "through psycopg2 (write postgresql://... or postgresql+psycopg2://...)"
        )
    normal = "postgresql+psycopg2://" + url[found.end() :]
    from sqlalchemy.engine import make_url  # here: a process that reads no URL skips the import
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(normal)
    except (ArgumentError, ValueError) as exc:  # a port that is no number, say
        raise ValueError(
            f"is not a URL the PostgreSQL driver can read ({redact_secrets(str(exc))})"
        ) from None
    return normal


WILDCARDS = ("", "0.0.0.0", "::")
"""The hosts a server listens on to listen on every address."""


def host_port(host: str, port: int) -> str:
    """``host:port`` as URLs and gunicorn's bind take it: an IPv6 address in brackets
    (``[::1]:8003``; ``::1:8003`` read as no port)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def base_url(host: str, port: int, wildcard_as: str = "127.0.0.1") -> str:
    """``http://host:port`` of an api listening on ``host``; one listening everywhere is
    reached as ``wildcard_as`` (by default from its own host)."""
    return f"http://{host_port(wildcard_as if host in WILDCARDS else host, port)}"
