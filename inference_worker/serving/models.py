"""Which model serves a job, and reloading models between jobs without stopping a worker.

Operators set the serving state in Redis (a generation number and the challenger's share of
traffic, see ``RedisStore.request_reload``). Every worker process compares that generation
with its own before each job; when it changed, it resolves the aliases again, fetches and
verifies the versions, creates new sessions and only then swaps them in. A job already running
keeps the model it started with, and a failed load keeps the models the process had.

Celery's remote control would reach only the main process of a prefork worker, while the
sessions live in its children; the shared generation reaches every child, including those
that start later.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference_worker.core.contract import ModelError
from inference_worker.serving.local_copies import RegisteredVersion
from inference_worker.serving.onnx_model import LocalizationModel
from inference_worker.serving.registry import (
    CHALLENGER,
    CHAMPION,
    RegistryError,
    RegistryUnavailable,
    last_known_copy,
    open_registry,
)
from inference_worker.settings import Settings
from inference_worker.storage.database import JobStore
from inference_worker.storage.redis_store import RedisStore
from tasks.contract import challenger_share

log = logging.getLogger(__name__)
ON_DEMAND_LIMIT = 3


class ModelUnavailable(Exception):
    """A job asked for a model this worker cannot serve; the message is the job's error."""


def choose_alias(job_id: str, challenger_fraction: float, has_challenger: bool) -> str:
    if has_challenger and challenger_share(job_id) < challenger_fraction:
        return CHALLENGER
    return CHAMPION


@dataclass
class Loaded:
    model: LocalizationModel
    registry_version: str | None
    model_version_id: int | None
    loaded_at: float = field(default_factory=time.time)

    def describe(self) -> dict[str, Any]:
        meta = self.model.metadata
        return {
            "registry_version": self.registry_version,
            "model_version": meta.version,
            "sha256": meta.sha256,
            "load_s": round(self.model.load_seconds, 4),
            "warmup_s": round(self.model.warmup_seconds, 4),
            "loaded_at": self.loaded_at,
        }


REGISTRY_RETRY_S = 10.0
"""How long a process that found the registry down waits before it tries a reload again."""


class ServedModels:
    """The sessions one worker process serves, by alias."""

    def __init__(self, settings: Settings, jobs: JobStore, store: RedisStore) -> None:
        self.settings = settings
        self.jobs = jobs
        self.store = store
        self.by_alias: dict[str, Loaded] = {}
        self.on_demand: dict[str, Loaded] = {}
        self.generation = -1
        self.challenger_fraction = 0.0
        self.last_error: str | None = None
        self._failed_generation: int | None = None
        self._registry_retry_at = 0.0
        self._outage: RegistryUnavailable | None = None
        """The registry's failure while it is known not to answer."""
        self._lock = threading.Lock()

    def refresh(self, *, before_job: bool = False) -> None:
        """Reload if operators asked since the last look.

        Called before each batch (``before_job``) and by the reload thread (so idle
        processes follow too); the new sessions replace the old ones in one assignment, and a
        job already running keeps the model it was given. While the registry is known not to
        answer, only the reload thread asks it again: a registry that drops connections
        rather than refusing them takes seconds to fail, which a batch would wait for.
        """
        if before_job and self._outage is not None and self.by_alias:
            return
        with self._lock:
            self._refresh()

    def _refresh(self) -> None:
        generation, fraction = self.store.serving_state()
        if generation in (self.generation, self._failed_generation):
            return
        if time.monotonic() < self._registry_retry_at:
            return
        try:
            by_alias = self._load_aliases()
        except RegistryUnavailable as exc:
            # Nothing is wrong with the versions: the reload is tried again once the pause is
            # over (not before every job, each of which would wait for the registry's answer).
            self._registry_retry_at = time.monotonic() + REGISTRY_RETRY_S
            self._outage = exc
            if self.by_alias:
                self.last_error = f"reload to generation {generation} waits for the registry: {exc}"
                log.warning("%s; keeping %s", self.last_error, self.summary())
                return
            # A process starting in the outage (one replacing a pool process that died) serves
            # what the aliases named when this host last read them, until the registry answers.
            self.by_alias, self.on_demand = self._last_known(exc), {}
            self.challenger_fraction = fraction
            self.last_error = (
                f"{exc}; serving {self.summary()} as this host last read the registry's "
                "aliases, until it answers"
            )
            log.warning("%s", self.last_error)
            return
        except (ModelError, RegistryError, OSError) as exc:
            self._failed_generation = generation
            self.last_error = f"reload to generation {generation} refused: {exc}"
            log.error("%s; keeping %s", self.last_error, self.summary())
            if not self.by_alias:
                raise
            return
        self.by_alias, self.on_demand = by_alias, {}
        self.generation, self.challenger_fraction = generation, fraction
        self.last_error, self._failed_generation, self._outage = None, None, None
        log.info("serving generation %d: %s", generation, self.summary())

    def summary(self) -> str:
        return (
            ", ".join(
                f"{alias}={loaded.model.version}"
                + (f" (registry v{loaded.registry_version})" if loaded.registry_version else "")
                for alias, loaded in self.by_alias.items()
            )
            or "nothing"
        )

    def _load(self, model_dir: Path, registry_version: str | None) -> Loaded:
        model = LocalizationModel(
            model_dir,
            intra_op_threads=self.settings.onnx_intra_op_threads,
            inter_op_threads=self.settings.onnx_inter_op_threads,
        )
        meta = model.metadata
        version_id = self.jobs.register_model(
            name=meta.name,
            version=meta.version,
            onnx_path=str(model_dir / "model.onnx"),
            sha256=meta.sha256,
            metrics=meta.metrics,
        )
        return Loaded(model, registry_version, version_id)

    def _load_aliases(self) -> dict[str, Loaded]:
        if self.settings.model_source != "registry":
            return {CHAMPION: self._load(Path(self.settings.model_dir), None)}
        registry = open_registry(self.settings)
        aliases = registry.aliases()
        return self._load_each(
            [alias for alias in (self.settings.model_alias, CHALLENGER) if alias in aliases],
            registry.fetch,
        )

    def _last_known(self, outage: RegistryUnavailable) -> dict[str, Loaded]:
        """The copies of what the aliases named when this host last read them.

        Raises:
            RegistryUnavailable: ``outage``, when this host holds no copy of the champion.
        """
        known: dict[str, tuple[RegisteredVersion, Path]] = {}
        for alias in (self.settings.model_alias, CHALLENGER):
            try:
                known[alias] = last_known_copy(self.settings, alias, outage)
            except RegistryUnavailable:
                if alias == self.settings.model_alias:
                    raise
                # no challenger known here: the champion takes every job
        return self._load_each(list(known), known.__getitem__)

    def _load_each(
        self, aliases: list[str], fetch: Callable[[str], tuple[RegisteredVersion, Path]]
    ) -> dict[str, Loaded]:
        """Sessions for ``aliases`` (the served alias as champion), one for each version."""
        loaded: dict[str, Loaded] = {}
        by_version: dict[str, Loaded] = {}
        for alias in dict.fromkeys(aliases):
            found, model_dir = fetch(alias)
            if found.version not in by_version:
                by_version[found.version] = self._load(model_dir, found.version)
            loaded[CHAMPION if alias == self.settings.model_alias else alias] = by_version[
                found.version
            ]
        if CHAMPION not in loaded:
            raise RegistryError(f"no version under alias {self.settings.model_alias!r}")
        return loaded

    def choose(self, job_id: str | None, requested: str | None) -> Loaded:
        """The model for a job: the one it asked for, else champion or challenger by its id."""
        if requested:
            return self._requested(requested)
        alias = choose_alias(job_id or "", self.challenger_fraction, CHALLENGER in self.by_alias)
        return self.by_alias[alias]

    def _requested(self, requested: str) -> Loaded:
        if requested in self.by_alias:
            return self.by_alias[requested]
        for loaded in (*self.by_alias.values(), *self.on_demand.values()):
            if requested in (loaded.registry_version, loaded.model.version):
                return loaded
        if self.settings.model_source != "registry":
            raise ModelUnavailable(f"model {requested!r} is not served here")
        try:
            try:
                if self._outage is not None:  # known down: not asked before the reload thread's try
                    raise RegistryUnavailable(str(self._outage))
                # Loaded before a prune (`models prune-cache`) may take a copy no alias names.
                with open_registry(self.settings).using(requested) as (found, model_dir):
                    loaded = self._load(model_dir, found.version)
            except RegistryUnavailable as outage:  # a copy here serves; else the job waits
                found, model_dir = last_known_copy(self.settings, requested, outage)
                loaded = self._load(model_dir, found.version)
        except RegistryUnavailable:
            raise  # waited out with the job in hand, as a store would be
        except (RegistryError, ModelError) as exc:
            raise ModelUnavailable(f"model {requested!r} cannot be served: {exc}") from None
        if len(self.on_demand) >= ON_DEMAND_LIMIT:
            self.on_demand.pop(next(iter(self.on_demand)))
        self.on_demand[found.version] = loaded
        return loaded

    def describe(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "challenger_fraction": self.challenger_fraction,
            "models": {alias: loaded.describe() for alias, loaded in self.by_alias.items()},
            "last_error": self.last_error,
        }
