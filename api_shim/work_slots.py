"""How many requests of a shim process work at once: ``HEIMDALL_API_THREADS``, whatever number
of threads gunicorn gives the process (that many and ``HEIMDALL_API_MAX_WAITS`` more, so that
requests waiting for jobs never take the threads submissions need).

A request takes a slot once the app's access checks have let it through and a submission's
body has arrived (``bodies.prefetch_body``), and gives it back when it ends; one that waits for
a job gives it back before it waits. Without the bound, a process's extra threads all worked
at once under load: more submissions in flight than PostgreSQL connections in the pool, whose
overflow connections were opened and closed for each (the shim's CPU a job +15-20 %).
"""

from __future__ import annotations

import threading

from flask import Flask, g

from api_shim.bodies import prefetch_body

HELD = "heimdall_work_slot"
"""The request context's mark that the request holds a slot."""


class WorkSlots:
    def __init__(self, count: int) -> None:
        self._slots = threading.Semaphore(count)

    def install(self, app: Flask) -> None:
        """Take a slot after the app's access checks and once the request's body has arrived
        (a slow upload holds a thread, not a slot); give it back at the request's end."""
        app.before_request(self._take)
        app.teardown_request(self._give_back)

    def _take(self) -> None:
        prefetch_body()
        self._slots.acquire()
        setattr(g, HELD, True)

    def _give_back(self, _error: BaseException | None = None) -> None:
        if g.pop(HELD, False):
            self._slots.release()

    def give_up(self) -> None:
        """Give the request's slot to another: for a request about to wait for a job. What is
        left to it afterwards (reading the finished job from Redis, answering) runs without
        one, so that woken waiters do not queue behind submissions to answer."""
        self._give_back()
