"""The HTTP shim's API keys as the settings hold them (``HEIMDALL_API_KEYS``), and the rate-limit
syntax they and the settings share."""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

NAME_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"


class ApiKey(BaseModel):
    """One API key of the HTTP shim (``HEIMDALL_API_KEYS`` is a JSON list of these)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="Who holds the key (logs, rate limits).")
    key: SecretStr | None = Field(None, description="The key itself (at least 16 characters).")
    key_sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="Or its sha256, hex: no secret in config."
    )
    role: Literal["client", "admin"] = Field(
        "client", description="client: submit and poll; admin: also reload and registry changes."
    )
    tenant: str | None = Field(
        None, pattern=NAME_PATTERN, description="Jobs it submits belong to this tenant."
    )
    rate_limit: str | None = Field(
        None, description="Requests allowed, e.g. '20/second;1000/hour'; default: api_rate_limit."
    )

    @model_validator(mode="after")
    def _one_secret(self) -> ApiKey:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError(f"API key {self.name!r}: give exactly one of key and key_sha256")
        if self.key is not None and len(self.key.get_secret_value()) < 16:
            raise ValueError(f"API key {self.name!r}: a key needs at least 16 characters")
        if self.rate_limit is not None:
            check_rate_limit(self.rate_limit)
        return self

    @property
    def digest(self) -> str:
        if self.key is not None:
            return hashlib.sha256(self.key.get_secret_value().encode()).hexdigest()
        assert self.key_sha256 is not None
        return self.key_sha256


def check_rate_limit(value: str) -> str:
    from limits import parse_many

    try:
        parse_many(value)
    except ValueError:
        raise ValueError(
            f"invalid rate limit {value!r}: write e.g. '20/second' or '20/second;1000/hour'"
        ) from None
    return value
