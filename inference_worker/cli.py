"""``heimdall-inference``: start the worker or the HTTP shim, migrate the database, run the demo."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


def _declare_queues(settings: Settings) -> None:
    """Declare the quorum queue and its dead-letter queue (replacing an empty older queue)."""
    import kombu

    from tasks.app import QueueMismatch, declare_queues

    with kombu.Connection(settings.broker_url, connect_timeout=5) as connection:
        try:
            declare_queues(connection, settings.queue, settings.max_deliveries)
        except QueueMismatch as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None


def _prepare_registry(settings: Settings) -> None:
    """In registry mode, make sure the served alias exists (an empty registry gets the
    reference model as champion) and its verified copy is cached."""
    from inference_worker.model import ModelError
    from inference_worker.registry import RegistryError, serving_model_dir

    try:
        serving_model_dir(settings, bootstrap=True)
    except (ModelError, RegistryError) as exc:
        print(f"error: cannot use the model ({settings.model_source}): {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _check_model(settings: Settings) -> None:
    from inference_worker.model import LocalizationModel, ModelError
    from inference_worker.registry import RegistryError, serving_model_dir

    try:
        model_dir = serving_model_dir(settings, bootstrap=True)
        model = LocalizationModel(model_dir)
    except (ModelError, RegistryError) as exc:
        print(f"error: cannot use the model ({settings.model_source}): {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"model {model.metadata.name} {model.version} verified ({model_dir})")


def cmd_worker(settings: Settings, args: argparse.Namespace) -> None:
    from inference_worker import observability

    observability.prepare_multiprocess_dir("worker")
    from inference_worker.worker import create_worker_app

    _require_services(settings)
    _check_model(settings)
    _migrate(settings)
    _declare_queues(settings)
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
    from inference_worker import observability

    observability.prepare_multiprocess_dir("api")
    from gunicorn.app.base import BaseApplication

    from api_shim.app import create_app

    _require_services(settings)
    _migrate(settings)
    _declare_queues(settings)
    _prepare_registry(settings)
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
            self.cfg.set(
                "child_exit", lambda _server, worker: observability.mark_process_dead(worker.pid)
            )

        def load(self):  # the WSGI app gunicorn serves
            return create_app(settings)

    ShimServer().run()


def cmd_flower(settings: Settings, args: argparse.Namespace) -> None:
    import secrets

    from tasks.app import create_celery

    _require_services(settings)
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
            f"--address={args.address or settings.flower_address}",
            f"--port={args.port or settings.flower_port}",
            f"--basic-auth={credentials}",
        ]
    )


def _read_capture(args: argparse.Namespace) -> Any:
    import numpy as np

    path = Path(args.file)
    if args.raw:
        raw = np.fromfile(path, dtype="<c8")
        if raw.size % 3:
            print(f"error: {path} holds {raw.size} complex64 values, not 3 x n", file=sys.stderr)
            raise SystemExit(2)
        return raw.reshape(3, -1)
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        print(f"error: cannot read {path} as .npy: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _print_job(view: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(view, indent=2))
        return
    print(f"job {view['job_id']}: {view['status']}")
    if view["status"] == "succeeded":
        result = view["result"]
        e68, e95 = result["ellipses"]["68"], result["ellipses"]["95"]
        print(
            f"  position {result['lat']:.5f}, {result['lon']:.5f}  (model {view['model_version']}, "
            f"cache hit: {str(view['cache_hit']).lower()})"
        )
        for label, shape in (("68%", e68), ("95%", e95)):
            print(
                f"  {label} ellipse: {shape['semi_major_m'] / 1e3:.1f} x "
                f"{shape['semi_minor_m'] / 1e3:.1f} km, major axis {shape['orientation_deg']:.0f}° "
                "from north"
            )
    elif view.get("error"):
        print(f"  error: {view['error']}")


def cmd_submit(settings: Settings, args: argparse.Namespace) -> None:
    from inference_worker.capture import CaptureError

    iq = _read_capture(args)
    fields = {
        "sample_rate_hz": args.sample_rate,
        "frequency_mhz": args.frequency_mhz,
        "receivers": args.receivers.split(","),
        "job_id": args.job_id,
        "capture_time": args.capture_time,
    }
    if args.via == "queue":
        from tasks.producer import CaptureProducer

        with CaptureProducer() as producer:
            try:
                job_id = producer.submit(iq, **fields)
            except CaptureError as exc:
                print(f"error: {exc}", file=sys.stderr)
                raise SystemExit(2) from None
            print(f"submitted job {job_id} to queue {settings.queue}")
            if args.no_wait:
                return
            _print_job(producer.wait(job_id, timeout_s=args.timeout), args.json)
        return
    from api_shim.client import ShimClient, ShimError

    client = ShimClient(args.url or f"http://{settings.api_host}:{settings.api_port}")
    try:
        accepted = client.submit_npy(iq, **fields)
    except ShimError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"submitted job {accepted['job_id']} ({accepted['status_url']})")
    if not args.no_wait:
        _print_job(client.wait(accepted["job_id"], timeout_s=args.timeout), args.json)


def cmd_status(settings: Settings, args: argparse.Namespace) -> None:
    from api_shim.client import ShimClient, ShimError

    client = ShimClient(args.url or f"http://{settings.api_host}:{settings.api_port}")
    try:
        _print_job(client.job(args.job_id), args.json)
    except ShimError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def cmd_models(settings: Settings, args: argparse.Namespace) -> None:
    from inference_worker.model import ModelError
    from inference_worker.registry import RegistryError, open_registry

    if args.action not in ("list", "reload") and not args.target:
        print(f"error: models {args.action} needs a target (see --help)", file=sys.stderr)
        raise SystemExit(2)
    if args.action == "promote" and not args.alias:
        print(
            "error: models promote VERSION needs --alias (champion, challenger, ...)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    registry = open_registry(settings)
    try:
        if args.action == "list":
            versions = registry.versions()
            if args.json:
                print(json.dumps([v.to_json() for v in versions], indent=2))
                return
            if not versions:
                print(f"no versions of {registry.name} registered")
            for v in versions:
                aliases = ", ".join(v.aliases) or "-"
                print(
                    f"{v.version:>4}  {v.model_version:<12} aliases: {aliases:<22} {v.description}"
                )
        elif args.action == "register":
            registered = registry.register(Path(args.target), description=args.description or "")
            print(f"registered {args.target} as version {registered.version}")
            if args.alias:
                registry.set_alias(args.alias, registered.version)
                print(f"{args.alias} -> version {registered.version}")
        elif args.action == "promote":
            registry.set_alias(args.alias, args.target)
            print(f"{args.alias} -> version {args.target}")
        elif args.action == "demote":
            registry.remove_alias(args.target)
            print(f"alias {args.target} removed")
        elif args.action == "reload":
            from inference_worker.serving import reload_plan
            from inference_worker.storage.redis_store import RedisStore, connect

            plan = reload_plan(settings)
            store = RedisStore(connect(settings.redis_url), settings.redis_prefix)
            generation = store.request_reload(args.challenger_fraction)
            _, fraction = store.serving_state()
            print(
                f"reload requested (generation {generation}): champion version {plan['champion']}, "
                f"challenger {plan['challenger'] or 'none'} with {fraction:.0%} of jobs; "
                "each worker process swaps between jobs"
            )
        elif args.action == "verify":
            found, model_dir = registry.fetch(args.target)
            print(f"version {found.version} verified (sha256 {found.sha256[:12]}…): {model_dir}")
    except (RegistryError, ModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> None:
    _require_services(settings)
    _migrate(settings)
    _declare_queues(settings)
    print(
        f"database schema {settings.database_schema!r} is up to date; queue {settings.queue!r} "
        "and its dead-letter queue are declared"
    )


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

    flower = sub.add_parser("flower", help="start Flower (task and worker monitor) with basic auth")
    flower.add_argument("--address")
    flower.add_argument("--port", type=int)
    flower.set_defaults(func=cmd_flower)

    submit = sub.add_parser("submit", help="locate a capture from a file and print the result")
    submit.add_argument(
        "file", help=".npy of a (3, n) complex64 array, or raw complex64 with --raw"
    )
    submit.add_argument(
        "--raw", action="store_true", help="file is raw little-endian complex64, (3, n) C order"
    )
    submit.add_argument("--sample-rate", type=float, required=True, help="Hz")
    submit.add_argument("--frequency-mhz", type=float, required=True)
    submit.add_argument("--receivers", required=True, help="receiver ids in row order, a,b,c")
    submit.add_argument("--job-id")
    submit.add_argument("--capture-time", help="ISO 8601")
    submit.add_argument("--via", choices=["http", "queue"], default="http", help="shim or RabbitMQ")
    submit.add_argument("--url", help="shim URL (default from settings)")
    submit.add_argument("--no-wait", action="store_true", help="print the job id and return")
    submit.add_argument("--timeout", type=float, default=60.0)
    submit.add_argument("--json", action="store_true", help="print the whole job as JSON")
    submit.set_defaults(func=cmd_submit)

    models = sub.add_parser(
        "models",
        help="the model registry: list, register, promote (set an alias), demote, verify, reload",
        description="list | register MODEL_DIR [--alias A] | promote VERSION --alias A | "
        "demote ALIAS | verify VERSION_OR_ALIAS | reload [--challenger-fraction F]",
    )
    models.add_argument(
        "action", choices=["list", "register", "promote", "demote", "verify", "reload"]
    )
    models.add_argument("target", nargs="?", help="model folder, version number or alias")
    models.add_argument("--alias", help="alias to set (champion, challenger, ...)")
    models.add_argument("--description")
    models.add_argument("--json", action="store_true")
    models.add_argument(
        "--challenger-fraction", type=float, help="with reload: share of jobs for the challenger"
    )
    models.set_defaults(func=cmd_models)

    status = sub.add_parser("status", help="show a job's status and result")
    status.add_argument("job_id")
    status.add_argument("--url", help="shim URL (default from settings)")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

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
