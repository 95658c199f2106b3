"""The one reload procedure, for ``POST /model/reload`` and ``heimdall-inference models reload``.

1. Verify what the reload will serve (each alias fetched, its sha256 checked) before any worker
   is asked, so a bad version is refused while every worker keeps its models.
2. Mirror the registry into ``model_versions`` (PostgreSQL keeps which versions were served).
3. Bump the serving generation in Redis, with the new champion's summary: every worker process
   swaps models between jobs, and every shim process and producer checks submissions against
   the new champion within a second.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference_worker.core.contract import ModelSummary, load_metadata
from inference_worker.serving.registry import RegistryError, open_registry, serving_model_dir
from inference_worker.settings import Settings
from inference_worker.storage.database import JobStore
from inference_worker.storage.redis_store import RedisStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReloadPlan:
    champion: str
    """The champion's registry version (or model version when serving a folder)."""
    challenger: str | None
    summary: ModelSummary
    """The champion's receivers and feature minimums, which submissions are checked against."""

    def to_json(self) -> dict[str, Any]:
        return {"champion": self.champion, "challenger": self.challenger}


def reload_plan(settings: Settings) -> ReloadPlan:
    """What a reload will serve, verified before any worker is asked.

    Raises:
        ModelError, RegistryError: a version is missing or fails its check (nothing changes).
    """
    if settings.model_source != "registry":
        metadata = load_metadata(Path(settings.model_dir), verify=True)
        return ReloadPlan(metadata.version, None, ModelSummary.of(metadata))
    registry = open_registry(settings)
    aliases = registry.aliases()
    if settings.model_alias not in aliases:
        raise RegistryError(f"no version under alias {settings.model_alias!r}")
    found, champion_dir = registry.fetch(settings.model_alias)
    summary = ModelSummary.of(load_metadata(champion_dir, verify=False))
    challenger = None
    if "challenger" in aliases:
        other, challenger_dir = registry.fetch("challenger")
        other_ids = load_metadata(challenger_dir, verify=False).receiver_ids
        if other_ids != summary.receiver_ids:  # its share of the jobs could not be served
            raise RegistryError(
                f"the challenger (version {other.version}) serves receivers "
                f"{', '.join(other_ids)}, the champion {', '.join(summary.receiver_ids)}: "
                "both must serve the same network (demote the challenger first)"
            )
        challenger = other.version
    return ReloadPlan(found.version, challenger, summary)


def mirror_registry(settings: Settings, jobs: JobStore) -> None:
    """Copy the registry's versions and aliases into ``model_versions`` (registry mode only).

    Raises:
        One of the store's transient errors when PostgreSQL is unreachable.
    """
    if settings.model_source != "registry":
        return
    versions = [v.to_json() for v in open_registry(settings).versions()]
    jobs.sync_registry(settings.model_name, versions)


def request_reload(
    settings: Settings, jobs: JobStore, store: RedisStore, challenger_fraction: float | None
) -> dict[str, Any]:
    """Verify, mirror, then ask every worker to reload; returns what was asked.

    Raises:
        ModelError, RegistryError: the reload is refused; workers keep their models.
        One of the store's transient errors: PostgreSQL or Redis is unreachable.
    """
    plan = reload_plan(settings)
    mirror_registry(settings, jobs)
    generation = store.request_reload(challenger_fraction, champion=plan.summary.to_json())
    _, fraction = store.serving_state()
    log.info(
        "reload requested (generation %d): champion %s, challenger %s at %.0f%%",
        generation,
        plan.champion,
        plan.challenger or "none",
        fraction * 100,
    )
    return {"generation": generation, "challenger_fraction": fraction, **plan.to_json()}


def announce_serving_model(settings: Settings, store: RedisStore) -> ModelSummary:
    """Announce the configured champion's summary in Redis (at start of a worker or shim)."""
    summary = ModelSummary.of(load_metadata(serving_model_dir(settings), verify=False))
    store.announce_model(summary.to_json())
    return summary
