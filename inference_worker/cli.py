"""``heimdall-inference``: start the worker or the HTTP shim, migrate the database, run the demo."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from inference_worker.settings import Settings, load_settings

log = logging.getLogger("heimdall")


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)


def _require_services(settings: Settings) -> None:
    from inference_worker.reachability import unreachable_services

    failures = unreachable_services(settings)
    if failures:
        for message in failures.values():
            print(f"error: {message}", file=sys.stderr)
        print(
            "Start the missing service(s) or point HEIMDALL_BROKER_URL / HEIMDALL_REDIS_URL / "
            "HEIMDALL_DATABASE_URL at running ones.",
            file=sys.stderr,
        )
        raise SystemExit(2)


def _migrate(settings: Settings) -> None:
    from inference_worker.storage.database import create_engine, migrate

    engine = create_engine(settings.database_url, settings.database_schema, pool_size=1)
    try:
        migrate(engine, settings.database_schema)
    finally:
        engine.dispose()


def _check_model(settings: Settings) -> None:
    from inference_worker.model import LocalizationModel, ModelError

    try:
        model = LocalizationModel(settings.model_dir)
    except ModelError as exc:
        print(f"error: cannot use the model in {settings.model_dir}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"model {model.metadata.name} {model.version} verified ({settings.model_dir})")


def cmd_worker(settings: Settings, args: argparse.Namespace) -> None:
    from inference_worker.worker import create_worker_app

    _require_services(settings)
    _check_model(settings)
    _migrate(settings)
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
    from gunicorn.app.base import BaseApplication

    from api_shim.app import create_app

    _require_services(settings)
    _migrate(settings)
    host = args.host or settings.api_host
    port = args.port or settings.api_port
    workers = args.workers or settings.api_workers

    class ShimServer(BaseApplication):
        def load_config(self) -> None:
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("timeout", 60)
            self.cfg.set("graceful_timeout", 30)
            self.cfg.set("accesslog", "-")

        def load(self):  # the WSGI app gunicorn serves
            return create_app(settings)

    ShimServer().run()


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> None:
    _require_services(settings)
    _migrate(settings)
    print(f"database schema {settings.database_schema!r} is up to date")


def cmd_demo(settings: Settings, args: argparse.Namespace) -> None:
    from inference_worker.demo import run_demo

    raise SystemExit(run_demo(settings, captures=args.captures, seed=args.seed))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="heimdall-inference",
        description="Heimdall inference: locate transmitters from 3-receiver IQ captures.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    worker = sub.add_parser("worker", help="start a Celery worker (one ONNX session per process)")
    worker.add_argument("--concurrency", type=int, help="worker processes (default: settings)")
    worker.add_argument("--pool", default="prefork", choices=["prefork", "solo"])
    worker.add_argument("--hostname", help="Celery node name (default heimdall-<pid>@<host>)")
    worker.set_defaults(func=cmd_worker)

    api = sub.add_parser("api", help="start the HTTP shim under gunicorn")
    api.add_argument("--host")
    api.add_argument("--port", type=int)
    api.add_argument("--workers", type=int)
    api.set_defaults(func=cmd_api)

    migrate = sub.add_parser("migrate", help="create or upgrade the PostgreSQL schema")
    migrate.set_defaults(func=cmd_migrate)

    demo = sub.add_parser(
        "demo",
        help="start a worker and the shim if none run, locate simulated captures, print them",
    )
    demo.add_argument("--captures", type=int, default=6, help="how many captures to submit")
    demo.add_argument("--seed", type=int, help="simulation seed (default: a new one each run)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except Exception as exc:  # pydantic's ValidationError lists every bad variable
        print(f"error: invalid settings: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    _configure_logging(settings.worker_loglevel)
    args.func(settings, args)


if __name__ == "__main__":
    main()
