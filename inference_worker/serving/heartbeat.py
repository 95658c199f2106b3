"""A process's heartbeat in Redis, what ``check`` and ``/health`` count as a live worker or api.

Worker processes (:mod:`inference_worker.serving.runtime`) and shim processes
(:mod:`api_shim.presence`) beat the same way: every ``HEARTBEAT_INTERVAL_S`` from a thread of
their own, whatever Redis answers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from inference_worker.storage.errors import STORE_ERRORS


def beat_until(
    stop: threading.Event, beat: Callable[[], None], interval_s: float, log: logging.Logger
) -> None:
    """Call ``beat`` every ``interval_s`` until ``stop`` is set, outliving any one failure."""
    while not stop.is_set():
        try:
            beat()
        except STORE_ERRORS as exc:  # Redis down, full or refusing writes: beat again next time
            log.warning("heartbeat to Redis failed: %s", exc)
        except Exception:  # any other refusal (NOPERM: an ACL that denies the command) too:
            # a heartbeat thread that ended would leave a working process counted as gone
            log.exception("heartbeat to Redis failed")
        stop.wait(interval_s)
