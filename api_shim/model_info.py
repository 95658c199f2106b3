"""The champion's description for ``GET /model/info``, read again only after a reload.

Every call opened the registry, resolved the alias and hashed the model file (7–10 ms), and
answered ``503`` while the registry was down — though the workers serve what the last reload
gave them until the next one, which is what a client building captures needs to know. The
description is now kept per serving generation (one Redis read a call); a reload makes the next
call read the registry again, and a registry that does not answer leaves the last description
(or, in a shim that started during the outage, the copy this host last verified).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from inference_worker.core.contract import load_metadata
from inference_worker.serving.registry import RegistryUnavailable, serving_model_dir
from inference_worker.settings import Settings
from inference_worker.storage.errors import TRANSIENT_ERRORS
from inference_worker.storage.redis_store import RedisStore

RETRY_S = 10.0
"""How long a description kept through a registry outage is answered before the registry is
asked again."""


def describe_model(model_dir: Path) -> dict[str, Any]:
    """What a client needs to build captures and draw results, from a model folder."""
    meta = load_metadata(model_dir, verify=False)
    raw = json.loads((model_dir / "model.json").read_text())
    return {
        "name": meta.name,
        "version": meta.version,
        "architecture": meta.architecture,
        "sha256": meta.sha256,
        "input": raw.get(
            "input", {"shape": ["batch", *[3, meta.features.n_mels, meta.features.n_frames]]}
        ),
        "outputs": raw["outputs"],
        "receivers": [r.__dict__ for r in meta.receivers],
        "features": meta.features.to_metadata(),
        "metrics": meta.metrics,
        "training": raw.get("training", {}),
    }


class ModelInfo:
    """The served champion's description, kept for the serving generation it was read in."""

    def __init__(self, settings: Settings, store: RedisStore) -> None:
        self.settings = settings
        self.store = store
        self._body: dict[str, Any] | None = None
        self._generation: int | None = None
        self._retry_at = 0.0
        self._lock = threading.Lock()

    def current(self) -> dict[str, Any]:
        """The description (read again when a reload changed the serving generation).

        Raises:
            RegistryUnavailable: the registry does not answer and nothing was read before,
                here or on this host.
        """
        try:
            generation: int | None = self.store.serving_state()[0]
        except TRANSIENT_ERRORS:  # Redis down: what was read last is still what is served
            generation = None
        with self._lock:
            fresh = self._body is not None and (
                generation in (None, self._generation) or time.monotonic() < self._retry_at
            )
            if fresh:
                assert self._body is not None
                return self._body
            try:
                self._body = describe_model(serving_model_dir(self.settings))
                self._generation = generation
            except RegistryUnavailable:
                # The workers cannot reload either: they serve what they had.
                self._retry_at = time.monotonic() + RETRY_S
                if self._body is None:
                    self._body = describe_model(serving_model_dir(self.settings, fall_back=True))
            return self._body
