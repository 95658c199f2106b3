"""The commands that run the service's processes: worker, api, flower, migrate."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator

from inference_worker.cli import bootstrap
from inference_worker.settings import Settings
from inference_worker.urls import host_port

log = logging.getLogger("heimdall")


def cmd_worker(settings: Settings, args: argparse.Namespace) -> None:
    from inference_worker.serving import observability

    observability.prepare_multiprocess_dir("worker")
    from inference_worker.serving.worker import create_worker_app

    bootstrap.start_up(
        settings,
        [
            bootstrap.check_model,
            bootstrap.migrate_database,
            bootstrap.declare_queues,
            bootstrap.announce_model,
        ],
    )
    if settings.worker_metrics_port:
        try:
            observability.start_worker_exporter(settings.worker_metrics_port)
        except OSError as exc:
            log.warning("worker metrics not served on :%d: %s", settings.worker_metrics_port, exc)
    app = create_worker_app(settings)
    concurrency = args.concurrency or settings.worker_concurrency
    argv = [
        "worker",
        f"--pool={args.pool}",
        f"--concurrency={concurrency}",
        f"--queues={settings.queue}",
        f"--loglevel={settings.worker_loglevel}",
        f"--hostname={args.hostname or f'heimdall-{os.getpid()}@%h'}",
        "--without-gossip",
        "--without-mingle",
    ]
    app.worker_main(argv)


def cmd_api(settings: Settings, args: argparse.Namespace) -> None:
    from inference_worker.serving import observability

    observability.prepare_multiprocess_dir("api")
    from gunicorn.app.base import BaseApplication
    from gunicorn.arbiter import Arbiter

    from api_shim.app import create_app
    from api_shim.presence import (
        control_socket,
        process_exiting,
        process_started,
        server_threads,
    )
    from api_shim.starting import BACKLOG
    from inference_worker.core.features import load_signal_maths

    host = args.host or settings.api_host
    port = args.port or settings.api_port
    workers = args.workers or settings.api_workers
    handed = bootstrap.handed_listeners()  # systemd's socket, or the former master's
    address: contextlib.AbstractContextManager[str]
    if handed:  # gunicorn serves on the sockets handed to it, whatever its bind says
        bootstrap.warn_other_address(handed, host, port)
        bind = host_port(host, port)
        if os.environ.get("GUNICORN_PID"):  # a former master serves on them meanwhile
            address = contextlib.nullcontext(bind)
        else:  # systemd's, answered "starting" as the shim's own socket is
            address = _answering_handed(handed, bind)
    else:
        address = _held_address(host, port)
    with address as bind:
        bootstrap.start_up(
            settings,
            [
                bootstrap.migrate_database,
                bootstrap.declare_queues,
                bootstrap.prepare_registry,
                bootstrap.announce_model,
            ],
        )
        load_signal_maths()  # once, before gunicorn forks: every process inherits it

    class ShimServer(BaseApplication):
        def load_config(self) -> None:
            self.cfg.set("bind", bind)
            self.cfg.set("backlog", BACKLOG)
            self.cfg.set("workers", workers)
            threads, worker_class = server_threads(settings.api_threads, settings.api_max_waits)
            self.cfg.set("threads", threads)
            self.cfg.set("worker_class", worker_class)
            self.cfg.set("timeout", 60)
            self.cfg.set("graceful_timeout", 30)
            self.cfg.set("control_socket", control_socket(port))  # `gunicornc -s PATH`
            self.cfg.set("accesslog", "-" if settings.api_access_log else None)
            self.cfg.set(
                "child_exit", lambda _server, worker: observability.mark_process_dead(worker.pid)
            )
            # each process beats in Redis, so `check` on any host finds it, and ends its
            # requests' waits for jobs on SIGTERM
            started = lambda worker: process_started(worker.wsgi, host, port)  # noqa: E731
            self.cfg.set("post_worker_init", started)
            self.cfg.set("worker_exit", lambda _server, worker: process_exiting(worker.wsgi))

        def load(self):  # the WSGI app gunicorn serves
            return create_app(settings)

        def run(self) -> None:
            try:
                ShimArbiter(self).run()
            except RuntimeError as exc:  # a setting gunicorn refuses, as its own run says
                print(f"error: {exc}", file=sys.stderr)
                raise SystemExit(1) from None

    class ShimArbiter(Arbiter):
        def maybe_promote_master(self) -> None:
            """A master executed on SIGUSR2 takes its control socket back once the former master
            has exited: stopping, the former one removed the path both had listened on."""
            executed = self.master_pid != 0
            super().maybe_promote_master()
            if executed and self.master_pid == 0 and hasattr(self, "_start_control_server"):
                self._stop_control_server()
                self._start_control_server()

    ShimServer().run()


@contextlib.contextmanager
def _held_address(host: str, port: int) -> Iterator[str]:
    """The shim's address, taken now as gunicorn would bind it and answered "starting" (503)
    while the block waits for the stores; yields gunicorn's bind for the same socket, which is
    gunicorn's after the block (it closes the descriptor itself)."""
    from api_shim.starting import BACKLOG, answering_starting, gunicorn_family

    listener = bootstrap.bound_socket(host, port, "the shim", gunicorn_family(host))
    listener.listen(BACKLOG)
    with answering_starting(listener):
        yield f"fd://{listener.fileno()}"
    listener.detach()


@contextlib.contextmanager
def _answering_handed(handed: list[int], bind: str) -> Iterator[str]:
    """``bind``, the sockets systemd handed the shim answered "starting" (503) while the block
    waits for the stores; they stay gunicorn's to serve on."""
    from api_shim.starting import answering_handed

    with answering_handed(handed):
        yield bind


def cmd_flower(settings: Settings, args: argparse.Namespace) -> None:
    import secrets

    from tasks.app import create_celery

    address = args.address or settings.flower_address
    port = args.port or settings.flower_port
    bootstrap.require_free_address(address, port, "Flower")
    bootstrap.start_up(settings, [])
    credentials = settings.flower_basic_auth.get_secret_value()
    if not credentials:
        credentials = f"admin:{secrets.token_urlsafe(12)}"
        print(f"Flower credentials (set HEIMDALL_FLOWER_BASIC_AUTH to choose): {credentials}")
    elif ":" not in credentials:
        print("error: HEIMDALL_FLOWER_BASIC_AUTH must be 'user:password'", file=sys.stderr)
        raise SystemExit(2)
    app = create_celery(settings.broker_url, settings.queue, delivery_limit=settings.max_deliveries)
    app.start(
        [
            "flower",
            f"--address={address.strip('[]')}",  # tornado takes an IPv6 address bare
            f"--port={port}",
            f"--basic-auth={credentials}",
        ]
    )


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> None:
    bootstrap.require_services(settings)
    bootstrap.migrate_database(settings)
    bootstrap.declare_queues(settings)
    print(
        f"database schema {settings.database_schema!r} is up to date; queue {settings.queue!r} "
        "and its dead-letter queue are declared"
    )
