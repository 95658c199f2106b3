"""What submissions are checked against: the served model's summary, as announced in Redis."""

from __future__ import annotations

import logging
import threading
import time

from inference_worker.core.contract import ModelError, ModelSummary
from inference_worker.storage.errors import TRANSIENT_ERRORS
from inference_worker.storage.redis_store import RedisStore

log = logging.getLogger(__name__)


class ServedModelCache:
    """The served model's summary as the serving state in Redis announces it, asked at most once
    every ``max_age_s`` (a reload reaches every shim process and producer within that time).

    ``fallback`` answers while Redis has no announcement or cannot be reached.
    """

    def __init__(
        self, store: RedisStore, fallback: ModelSummary | None = None, max_age_s: float = 1.0
    ) -> None:
        self.store = store
        self.max_age_s = max_age_s
        self._summary = fallback
        self._asked_at = -float("inf")
        self._lock = threading.Lock()

    def current(self) -> ModelSummary | None:
        now = time.monotonic()
        if now - self._asked_at < self.max_age_s:
            return self._summary
        with self._lock:
            self._asked_at = now
            try:
                announced = self.store.served_model()
            except TRANSIENT_ERRORS:
                return self._summary  # Redis down: the submission itself will say so
            if announced is not None:
                try:
                    self._summary = ModelSummary.from_json(announced)
                except ModelError as exc:
                    log.error("ignoring the served model announced in Redis: %s", exc)
            return self._summary
