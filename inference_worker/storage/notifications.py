"""Waiting for jobs to finish without polling: workers publish each finished job's id on a Redis
channel, and one subscriber thread per process wakes the requests that wait for it."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from inference_worker.storage.redis_store import RedisStore

log = logging.getLogger(__name__)

RECONNECT_PAUSE_S = 1.0
ABANDONED_CHECK_S = 1.0
"""How often a wait asks whether its client is still there: one that went away (a client
timeout shorter than its wait) held its place among the process's waits to the end."""


class WaitDeclined(Exception):
    """The process already holds as many waits as it may: the caller answers at once."""


class FinishedJobs:
    """Wakes waiters when a job's id is published on the store's done channel.

    The thread starts on first use in each process (after a fork) and reconnects by itself; while
    Redis is down a waiter simply waits out its timeout, then reads the job as it is. At most
    ``most_waits`` waits are held at once (each holds its caller's thread).
    """

    def __init__(self, store: RedisStore, most_waits: int = 64) -> None:
        self.store = store
        self._slots = threading.BoundedSemaphore(most_waits) if most_waits else None
        self._waiting: dict[str, list[threading.Event]] = {}
        self._lock = threading.Lock()
        self._owner: int | None = None
        self._subscribed = threading.Event()
        self._closed = threading.Event()
        self._released = threading.Event()

    def wait(
        self,
        job_id: str,
        timeout_s: float,
        is_final: Callable[[], bool],
        abandoned: Callable[[], bool] = lambda: False,
    ) -> bool:
        """Block until ``job_id`` is announced final, ``is_final()`` says so, the timeout,
        :meth:`release`, or ``abandoned()`` (asked every :data:`ABANDONED_CHECK_S`: the client
        went away) says so; returns whether it was announced (or found) final.

        Raises:
            WaitDeclined: ``most_waits`` waits are held already (nothing was waited for).
        """
        if self._slots is None or not self._slots.acquire(blocking=False):
            raise WaitDeclined
        try:
            return self._wait(job_id, timeout_s, is_final, abandoned)
        finally:
            self._slots.release()

    def _wait(
        self,
        job_id: str,
        timeout_s: float,
        is_final: Callable[[], bool],
        abandoned: Callable[[], bool],
    ) -> bool:
        self._ensure_listening()
        event = threading.Event()
        with self._lock:
            self._waiting.setdefault(job_id, []).append(event)
        try:
            if self._released.is_set():  # after registering: a release in between is not missed
                return is_final()
            # Subscribed before looking: a job finishing in between is not missed.
            self._subscribed.wait(min(timeout_s, 1.0))
            if is_final():
                return True
            deadline = time.monotonic() + timeout_s
            while (left := deadline - time.monotonic()) > 0:
                if event.wait(min(left, ABANDONED_CHECK_S)):
                    return not self._released.is_set()
                if abandoned():
                    return False
            return False
        finally:
            with self._lock:
                events = self._waiting.get(job_id, [])
                if event in events:
                    events.remove(event)
                if not events:
                    self._waiting.pop(job_id, None)

    def _ensure_listening(self) -> None:
        with self._lock:
            if self._owner == os.getpid():
                return
            self._owner = os.getpid()
            self._subscribed.clear()
        threading.Thread(target=self._listen, name="heimdall-finished-jobs", daemon=True).start()

    def release(self) -> None:
        """End every wait now, and each later one at once (its caller then reads the job as it
        is): for a process shutting down, so that a request waiting for a job does not hold it
        for up to its whole wait and then lose its connection."""
        self._released.set()
        with self._lock:
            events = [event for events in self._waiting.values() for event in events]
        for event in events:
            event.set()

    def close(self) -> None:
        """Stop listening (within a second): for an app that ends before its process does."""
        self._closed.set()

    def _listen(self) -> None:
        while not self._closed.is_set():
            pubsub = self.store.client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.store.done_channel())
                self._subscribed.set()
                while not self._closed.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._wake(message)
            except Exception as exc:  # a dropped connection shows as several error types
                self._subscribed.clear()
                log.warning(
                    "listening for finished jobs failed, reconnecting: %s: %s",
                    type(exc).__name__,
                    exc,
                )
                self._closed.wait(RECONNECT_PAUSE_S)
            finally:
                try:
                    pubsub.close()
                except Exception:  # already broken
                    pass

    def _wake(self, message: dict[str, Any]) -> None:
        data = message.get("data")
        job_id = data.decode() if isinstance(data, bytes) else str(data)
        with self._lock:
            events = list(self._waiting.get(job_id, ()))
        for event in events:
            event.set()
