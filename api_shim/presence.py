"""Each shim process beats in Redis, as worker processes do, so that ``heimdall-inference check``
on any host finds every api of the deployment and asks each one's ``/health``; and ends its
requests' waits for jobs when it is told to stop.

Started in each gunicorn process once it has loaded the app (:func:`process_started`), and
forgotten when the process exits (:func:`process_exiting`, which also closes its broker
connections), by ``heimdall-inference api`` and by
``config/gunicorn.conf.py``; an app served otherwise (a test client, another WSGI server) beats
only where its server calls them.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from types import FrameType
from typing import Any

from flask import Flask

from api_shim.services import ShimServices
from inference_worker.serving.heartbeat import beat_until
from inference_worker.storage.errors import STORE_ERRORS
from inference_worker.storage.redis_store import HEARTBEAT_INTERVAL_S, HEARTBEAT_TTL_S
from inference_worker.urls import base_url

log = logging.getLogger(__name__)
EXTENSION = "heimdall-presence"


class ApiPresence:
    """The heartbeat of one shim process: where it answers, its queue and the champion it
    checks submissions against."""

    def __init__(self, shim: ShimServices, url: str) -> None:
        self.shim = shim
        self.url = url
        self.host = socket.gethostname()
        self.api_id = f"{self.host}:{os.getpid()}"
        self.started_at = time.time()
        self._stop = threading.Event()

    def info(self) -> dict[str, Any]:
        model = self.shim.served.current()
        return {
            "api_id": self.api_id,
            "host": self.host,
            "url": self.url,
            "queue": self.shim.settings.queue,
            "tdoa_max_receivers": self.shim.settings.tdoa_max_receivers,
            "model_version": model.version if model else None,
            "started_at": self.started_at,
            "seen_at": time.time(),
        }

    def start(self) -> None:
        def beat() -> None:
            self.shim.store.api_heartbeat(self.api_id, self.info(), HEARTBEAT_TTL_S)

        threading.Thread(
            target=beat_until,
            args=(self._stop, beat, HEARTBEAT_INTERVAL_S, log),
            name="heimdall-api-heartbeat",
            daemon=True,
        ).start()

    def stop(self) -> None:
        self._stop.set()
        try:
            self.shim.store.forget_api(self.api_id)
        except STORE_ERRORS:  # its beat lapses by itself
            pass


def control_socket(port: int) -> str:
    """Where the gunicorn master serving on ``port`` listens for ``gunicornc``: gunicorn's own
    folder (``$XDG_RUNTIME_DIR``, else ``~/.gunicorn``), a name of this port's. gunicorn's one
    default name for every master made a second shim on a host take the first one's socket
    (``gunicornc`` then reached the wrong one) and remove it when it stopped."""
    folder = os.environ.get("XDG_RUNTIME_DIR") or os.path.join(os.path.expanduser("~"), ".gunicorn")
    return os.path.join(folder, f"heimdall-api-{port}.ctl")


def server_threads(threads: int, max_waits: int) -> tuple[int, str]:
    """gunicorn's threads and worker class for a shim process: ``threads`` for requests' work
    and ``max_waits`` more for requests waiting for jobs (``?wait=``), so that waiting clients
    never take the threads submissions need; synchronous workers where that is one thread."""
    total = threads + max_waits
    return total, "gthread" if total > 1 else "sync"


def start_beating(app: object, host: str, port: int) -> None:
    """Beat for the shim process serving ``app`` on ``host:port``, announcing the settings'
    ``api_public_url`` or that address (one listening everywhere named by this host's name); not
    for an app that failed to load (gunicorn serves its error)."""
    if not isinstance(app, Flask):
        return
    shim: ShimServices = app.extensions["heimdall"]
    url = shim.settings.api_public_url or base_url(host, port, socket.gethostname())
    presence = ApiPresence(shim, url)
    app.extensions[EXTENSION] = presence
    presence.start()


def end_waits_on_term(app: object) -> None:
    """On SIGTERM (gunicorn stopping this process gracefully: a shutdown, a reload), end the
    requests that wait for a job at once, each answering its job as it is (the client asks
    again), before gunicorn's own handler lets the requests in flight finish. A waiting request
    otherwise held the stop for up to its whole wait, and past gunicorn's graceful timeout
    (30 s) lost its connection with no answer."""
    if not isinstance(app, Flask):
        return
    shim: ShimServices = app.extensions["heimdall"]
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: FrameType | None) -> None:
        # not in the handler itself: releasing takes locks the interrupted code may hold
        threading.Thread(target=shim.finished.release, daemon=True).start()
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:  # a server with no handler of its own: end as it would
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, on_term)


def process_started(app: object, host: str, port: int) -> None:
    """gunicorn's ``post_worker_init``: beat, and end waits on SIGTERM."""
    start_beating(app, host, port)
    end_waits_on_term(app)


def stop_beating(app: object) -> None:
    presence = app.extensions.get(EXTENSION) if isinstance(app, Flask) else None
    if isinstance(presence, ApiPresence):
        presence.stop()


def process_exiting(app: object) -> None:
    """gunicorn's ``worker_exit``: stop beating, and close the process's broker connections as
    RabbitMQ expects (dropped with the process, each stop was logged there as a warning)."""
    stop_beating(app)
    if isinstance(app, Flask):
        shim: ShimServices = app.extensions["heimdall"]
        shim.celery.close()
        shim.broker_probe.close()
