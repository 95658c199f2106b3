"""The faults of ``tools/chaos_soak.py``: relays that make each store go silent, and the
service's processes killed one at a time or all at once and started again."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from inference_worker.cli.processes import ProcessFailed, cli_process, settings_env, wait_until
from inference_worker.settings import Settings
from tools.process_meter import children
from tools.silent_relay import SilentProxy

FAULTS = (
    "kill-worker-process",
    "kill-shim-process",
    "kill-worker",
    "kill-shim",
    "silent-postgresql",
    "long-silent-postgresql",
    "restarted-postgresql",
    "silent-redis",
    "long-silent-redis",
    "restarted-redis",
    "silent-rabbitmq",
    "long-silent-rabbitmq",
    "restarted-rabbitmq",
    "silent-network",
)
SILENT_S = 8.0
LONG_SILENT_S = 20.0
"""Past the statement limit (15 s and 2 s) and Redis's socket timeout: the worker and the shim
give their calls up."""
RESTART_S = 2.0
"""How long a killed worker or shim stays down before it is started again, as a supervisor
(systemd, a container runtime) would."""


def credentials_of(broker: Any) -> str:
    """The ``user:password@`` of a kombu connection's URL, quoted; none where it names none
    (RabbitMQ's defaults then apply)."""
    if not broker.userid:
        return ""
    return f"{quote(broker.userid, safe='')}:{quote(broker.password or '', safe='')}@"


class Relays:
    """A relay for each store, and the settings that reach them through it."""

    def __init__(self, settings: Settings) -> None:
        import kombu
        import sqlalchemy as sa

        if settings.redis_url.startswith("unix:"):
            raise SystemExit("error: a Redis over a unix socket cannot be relayed; use TCP")
        database = sa.make_url(settings.database_url)
        redis_parts = urlsplit(settings.redis_url)
        broker = kombu.Connection(settings.broker_url)
        self.postgresql = SilentProxy(database.host or "127.0.0.1", database.port or 5432)
        self.redis = SilentProxy(redis_parts.hostname or "127.0.0.1", redis_parts.port or 6379)
        self.rabbitmq = SilentProxy(broker.hostname or "127.0.0.1", broker.port or 5672)
        credentials = redis_parts.netloc.rpartition("@")[0]
        redis_netloc = f"{credentials}@" if credentials else ""
        self.settings = settings.model_copy(
            update={
                "database_url": database.set(
                    host="127.0.0.1", port=self.postgresql.port
                ).render_as_string(hide_password=False),
                "redis_url": urlunsplit(
                    redis_parts._replace(netloc=f"{redis_netloc}127.0.0.1:{self.redis.port}")
                ),
                "broker_url": f"amqp://{credentials_of(broker)}127.0.0.1:{self.rabbitmq.port}/"
                f"{broker.virtual_host}",
            }
        )

    def all(self) -> tuple[SilentProxy, ...]:
        return (self.postgresql, self.redis, self.rabbitmq)

    def close(self) -> None:
        for relay in self.all():
            relay.close()


def has_children(pid: int) -> bool:
    return bool(children(pid))


class Restarts:
    """Kills the whole worker or the whole shim (every process of its group at once, as the
    kernel's OOM killer or a lost host would) and starts a fresh one :data:`RESTART_S` later;
    the fresh ones are stopped when ``stack`` closes."""

    def __init__(
        self, settings: Settings, port: int, groups: dict[str, list[int]], log_dir: Path
    ) -> None:
        self.groups = groups
        self.log_dir = log_dir
        self.env = {**settings_env(settings), "HEIMDALL_API_PORT": str(port)}
        self.commands = {
            "workers": ["worker", "--concurrency", "2"],
            "shim": ["api", "--workers", "2", "--port", str(port)],
        }
        self.stack = ExitStack()
        self.started = 0

    def kill_and_start(self, group: str) -> None:
        """Kill the group, then start it again until it starts, as a supervisor does (one
        started while a store does not answer exits at once, naming it); the soak's end, when
        every store speaks again, does not stop it, so the jobs accepted are still served."""
        try:
            os.killpg(self.groups[group][0], signal.SIGKILL)
        except ProcessLookupError:  # already gone
            pass
        for attempt in range(1, 101):
            time.sleep(RESTART_S)
            self.started += 1
            log = self.log_dir / f"{group}-{self.started}.log"
            process = self.stack.enter_context(cli_process(self.commands[group], log, self.env))
            self.groups[group] = [process.pid]
            try:
                wait_until(group, partial(has_children, process.pid), 120, process, 0.2)
                return
            except ProcessFailed as exc:
                print(f"  the restarted {exc} (try {attempt}; log: {log})", flush=True)
        print(f"  the {group} did not start again: the soak goes on without it", flush=True)

    def __enter__(self) -> Restarts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()


def fault_loop(
    relays: Relays,
    restarts: Restarts,
    faults: list[str],
    every_s: tuple[float, float],
    stop: threading.Event,
    started: float,
    rng: random.Random,
    overlap: bool = False,
) -> None:
    """A fault after each random pause: one at a time, or (``overlap``) each in a thread of its
    own while those before still last, never two on the same store or process group. The
    stores speak again at the end."""
    stores = {"postgresql": relays.postgresql, "redis": relays.redis, "rabbitmq": relays.rabbitmq}

    def silent(names: tuple[str, ...], seconds: float, restart: bool = False) -> Callable:
        def apply() -> None:
            for name in names:
                stores[name].speaking.clear()
            stop.wait(seconds)
            for name in names:
                (stores[name].restarted if restart else stores[name].speaking.set)()

        return apply

    def kill_child(group: str) -> Callable[[], None]:
        def apply() -> None:
            found = children(restarts.groups[group][0])
            if found:
                os.kill(rng.choice(found), signal.SIGKILL)

        return apply

    def kill_all(group: str) -> Callable[[], None]:
        return lambda: restarts.kill_and_start(group)

    restarted = "then back as a restarted host (its connections reset)"
    named = {"postgresql": "PostgreSQL", "redis": "Redis", "rabbitmq": "RabbitMQ"}
    actions: dict[str, tuple[str, tuple[str, ...], Callable[[], None]]] = {
        "kill-worker-process": (
            "a worker pool process killed",
            ("workers",),
            kill_child("workers"),
        ),
        "kill-shim-process": ("a shim process killed", ("shim",), kill_child("shim")),
        "kill-worker": (
            f"the whole worker killed, started {RESTART_S:g} s later",
            ("workers",),
            kill_all("workers"),
        ),
        "kill-shim": (
            f"the whole shim killed, started {RESTART_S:g} s later",
            ("shim",),
            kill_all("shim"),
        ),
        "silent-network": (
            f"PostgreSQL, Redis and RabbitMQ silent {SILENT_S:g} s (the host's network stalled)",
            tuple(stores),
            silent(tuple(stores), SILENT_S),
        ),
    }
    for store, name in named.items():
        actions[f"silent-{store}"] = (
            f"{name} silent {SILENT_S:g} s",
            (store,),
            silent((store,), SILENT_S),
        )
        actions[f"long-silent-{store}"] = (
            f"{name} silent {LONG_SILENT_S:g} s",
            (store,),
            silent((store,), LONG_SILENT_S),
        )
        actions[f"restarted-{store}"] = (
            f"{name} silent {SILENT_S:g} s, {restarted}",
            (store,),
            silent((store,), SILENT_S, restart=True),
        )
    busy: set[str] = set()
    lock = threading.Lock()
    running: list[threading.Thread] = []

    def run(what: str, targets: tuple[str, ...], apply: Callable[[], None]) -> None:
        print(f"  {time.monotonic() - started:6.1f} s  {what}", flush=True)
        try:
            apply()
        finally:
            with lock:
                busy.difference_update(targets)

    try:
        while not stop.wait(rng.uniform(*every_s)):
            with lock:
                free = [f for f in faults if not busy.intersection(actions[f][1])]
                if not free:
                    continue
                what, targets, apply = actions[rng.choice(free)]
                busy.update(targets)
            if not overlap:
                run(what, targets, apply)
                continue
            thread = threading.Thread(target=run, args=(what, targets, apply))
            thread.start()
            running.append(thread)
    finally:
        for thread in running:
            thread.join()
        for relay in relays.all():
            relay.speaking.set()
