"""``heimdall-inference``: start the worker or the HTTP shim, migrate the database, submit and
read jobs, manage models, run the demo."""

from __future__ import annotations

import argparse
import os
import select
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from api_shim.client import ShimError
from inference_worker.cli import bootstrap, check, tdoa, upkeep
from inference_worker.cli.arguments import PORT, count, number
from inference_worker.cli.jobs import cmd_status, cmd_submit
from inference_worker.cli.models import cmd_models
from inference_worker.cli.processes import ProcessFailed
from inference_worker.cli.serve import cmd_api, cmd_flower, cmd_migrate, cmd_worker
from inference_worker.cli.settings_errors import describe_invalid, describe_unparsable
from inference_worker.settings import Settings, load_settings
from inference_worker.settings_checks import PROCESSES_MAX


def cmd_demo(settings: Settings, args: argparse.Namespace) -> None:
    from inference_worker.cli.demo import run_demo

    raise SystemExit(run_demo(settings, captures=args.captures, seed=args.seed))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="heimdall-inference",
        description="Heimdall inference: locate transmitters from 3-receiver IQ captures.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    worker = sub.add_parser("worker", help="start a Celery worker (one ONNX session per process)")
    worker.add_argument(
        "--concurrency", type=count(1, PROCESSES_MAX), help="worker processes (default: settings)"
    )
    worker.add_argument("--pool", default="prefork", choices=["prefork", "solo"])
    worker.add_argument("--hostname", help="Celery node name (default heimdall-<pid>@<host>)")
    worker.set_defaults(func=cmd_worker)

    api = sub.add_parser("api", help="start the HTTP shim under gunicorn")
    api.add_argument("--host")
    api.add_argument("--port", type=PORT)
    api.add_argument(
        "--workers", type=count(1, PROCESSES_MAX), help="gunicorn processes (default: settings)"
    )
    api.set_defaults(func=cmd_api)

    migrate = sub.add_parser("migrate", help="create or upgrade the PostgreSQL schema")
    migrate.set_defaults(func=cmd_migrate)

    flower = sub.add_parser("flower", help="start Flower (task and worker monitor) with basic auth")
    flower.add_argument("--address")
    flower.add_argument("--port", type=PORT)
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
    submit.add_argument(
        "--timeout", type=number(0.0, above=True), default=60.0, help="seconds to wait (60)"
    )
    submit.add_argument("--json", action="store_true", help="print the whole job as JSON")
    submit.set_defaults(func=cmd_submit)

    models = sub.add_parser(
        "models",
        help="the model registry: list, register, promote (set an alias), demote, verify, "
        "reload; prune this host's copies",
        description="list | register MODEL_DIR [--alias A] | promote VERSION --alias A | "
        "demote ALIAS | verify VERSION_OR_ALIAS | reload [--challenger-fraction F] | "
        "prune-cache [--keep N] [--dry-run]",
    )
    models.add_argument(
        "action",
        choices=["list", "register", "promote", "demote", "verify", "reload", "prune-cache"],
    )
    models.add_argument("target", nargs="?", help="model folder, version number or alias")
    models.add_argument("--alias", help="alias to set (champion, challenger, ...)")
    models.add_argument("--description")
    models.add_argument("--json", action="store_true")
    models.add_argument(
        "--challenger-fraction",
        type=number(0.0, 1.0),
        help="with reload: share of jobs for the challenger, 0 to 1",
    )
    models.add_argument(
        "--keep",
        type=count(0),
        default=2,
        help="with prune-cache: copies kept beyond the versions the aliases name, the newest (2)",
    )
    models.add_argument(
        "--dry-run", action="store_true", help="with prune-cache: say what would be removed"
    )
    models.set_defaults(func=cmd_models)

    upkeep.add_parser(sub)
    check.add_parser(sub)
    tdoa.add_parser(sub)

    status = sub.add_parser("status", help="show a job's status and result")
    status.add_argument("job_id")
    status.add_argument("--url", help="shim URL (default from settings)")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    demo = sub.add_parser(
        "demo",
        help="start a worker and the shim if none run, locate simulated captures, print them",
    )
    demo.add_argument("--captures", type=count(1), default=6, help="how many captures to submit")
    demo.add_argument("--seed", type=int, help="simulation seed (default: a new one each run)")
    demo.set_defaults(func=cmd_demo)
    return parser


def _stdout_gone() -> bool:
    """Whether stdout's reader has gone (``| head`` read what it wanted): its pipe polls as
    failed. Then stdout is pointed at /dev/null, as the Python documentation advises, so that
    the interpreter's last flush fails no more."""
    if sys.stdout is None:  # started with stdout closed: print() writes nowhere
        return False
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):  # not a file (a test's capture)
        return False
    poller = select.poll()
    poller.register(fd, 0)  # a failed pipe is reported whatever was asked
    if not any(event & select.POLLERR for _, event in poller.poll(0)):
        return False
    _to_devnull(fd)
    return True


def _to_devnull(fd: int) -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _flushed() -> bool:
    """Whether what is left in stdout's buffer reached it; where its reader has gone, stdout
    is pointed at /dev/null (see :func:`_stdout_gone`)."""
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except BrokenPipeError:
        _to_devnull(sys.stdout.fileno())
        return False
    return True


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except ValidationError as exc:  # every bad variable, one line each
        for line in describe_invalid(exc):
            print(f"error: {line}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as exc:  # a value pydantic-settings cannot even parse (JSON of a list)
        print(f"error: {describe_unparsable(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    bootstrap.configure_logging(settings.worker_loglevel)
    try:
        args.func(settings, args)
    except SystemExit:  # a command's own status (the demo's): kept, stdout's reader gone or not
        _flushed()
        raise
    except BrokenPipeError as exc:
        if _stdout_gone():  # stop quietly, as a filter does
            raise SystemExit(1) from None
        print(f"error: {exc}", file=sys.stderr)  # a socket's
        raise SystemExit(2) from None
    except ShimError as exc:  # the shim's answer while waiting on a job (or not the shim's)
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except ConnectionError as exc:  # the shim did not answer (its client says where and why)
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except ProcessFailed as exc:  # a shim or worker a demo started (its log's tail is printed)
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt as exc:  # Ctrl-C: what the service accepted goes on
        from tasks.contract import JobWaitInterrupted

        later = ""
        if isinstance(exc, JobWaitInterrupted):
            job = exc.job_id
            later = f": job {job} goes on (`heimdall-inference status {job}` shows it)"
        print(f"interrupted{later}", file=sys.stderr)
        raise SystemExit(130) from None
    except TimeoutError as exc:  # a wait for a job ran out (the job goes on), or a socket's
        from tasks.contract import JobWaitTimeout

        later = ""
        if isinstance(exc, JobWaitTimeout):
            later = f" (it goes on: `heimdall-inference status {exc.job_id}` shows it)"
        print(f"error: {exc}{later}", file=sys.stderr)
        raise SystemExit(1) from None
    if not _flushed():  # what it printed last never reached a reader
        raise SystemExit(1)
