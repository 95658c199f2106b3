"""What every command does before it serves: check the services answer, migrate the database,
declare the queues, make sure the model to serve exists and is intact.

Public, so that the commands, the demo and the tools share one start-up procedure.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from inference_worker.settings import Settings
from inference_worker.urls import base_url

if TYPE_CHECKING:
    from api_shim.client import ShimClient

log = logging.getLogger(__name__)


def _start_errors() -> tuple[type[BaseException], ...]:
    import amqp.exceptions
    import kombu.exceptions

    from inference_worker.storage.errors import TRANSIENT_ERRORS

    return (
        *TRANSIENT_ERRORS,
        kombu.exceptions.OperationalError,  # RabbitMQ not answering a connection
        amqp.exceptions.RecoverableConnectionError,
        TimeoutError,  # a socket's, on a connection RabbitMQ stopped answering
    )


def shim_client(settings: Settings, url: str | None) -> ShimClient:
    """A client of the shim at ``url`` (``--url``), else where this host's settings put it."""
    from api_shim.client import ShimClient

    return ShimClient(url or base_url(settings.api_host, settings.api_port))


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # Celery logs every task's return value at INFO: the job runner logs each job already, and
    # formatting those lines cost the worker's main process about a millisecond a job.
    logging.getLogger("celery.app.trace").setLevel(
        max(logging.WARNING, logging.getLevelName(level))
    )


class StartWait:
    """The one deadline of a start's waits (``HEIMDALL_START_WAIT_S``) and what was said about
    them: a line for each new reason, again every 10 s while it lasts, not one a try."""

    def __init__(self, wait_s: float) -> None:
        import time

        self.wait_s = wait_s
        self.deadline = time.monotonic() + wait_s
        self.said: dict[str, int] = {}

    def left(self) -> float:
        import time

        return self.deadline - time.monotonic()

    def tell(self, key: str, reason: str) -> bool:
        """Say that the start waits for ``key`` (and why); False, saying nothing, once the wait
        is over."""
        left = self.left()
        if left <= 0:
            return False
        if self.said.get(key) != int(left) // 10:
            self.said[key] = int(left) // 10
            print(f"waiting up to {left:.0f} s more: {reason}", file=sys.stderr, flush=True)
        return True

    def pause(self) -> None:
        import time

        time.sleep(max(0.0, min(1.0, self.left())))


def require_services(
    settings: Settings, wait_s: float = 0.0, waiting: StartWait | None = None
) -> None:
    """Return once RabbitMQ, Redis and PostgreSQL have each answered; else say which do not and
    why, keep asking those for up to ``wait_s`` (a store restarting or failing over: each need
    answer once, not all at the same moment), then exit with status 2 naming them. A service
    that answers with a refusal (a password, a database it does not have) ends the start at
    once: waiting would not change it."""
    from inference_worker.storage.reachability import SERVICES, Refused, unreachable_services

    waiting = waiting or StartWait(wait_s)
    told: list[str] = []  # the services that did not answer the last time they were asked
    while failures := unreachable_services(settings, told or SERVICES):
        refused = [isinstance(message, Refused) for message in failures.values()]
        if any(refused):
            break
        if not all([waiting.tell(message, message) for message in failures.values()]):
            break
        for name in set(told) - set(failures):
            print(f"{name} answers now", file=sys.stderr, flush=True)
        told = list(failures)
        waiting.pause()
    else:
        for name in told:
            print(f"{name} answers now", file=sys.stderr, flush=True)
        return
    for message in failures.values():
        print(f"error: {message}", file=sys.stderr)
    if all(refused):
        raise SystemExit(2)  # each refusal says what to change
    waited = ""
    if waiting.wait_s and not any(refused):
        waited = f" (waited {waiting.wait_s:g} s: HEIMDALL_START_WAIT_S)"
    print(
        f"Start the missing service(s){waited} or point HEIMDALL_BROKER_URL / HEIMDALL_REDIS_URL "
        "/ HEIMDALL_DATABASE_URL at running ones.",
        file=sys.stderr,
    )
    raise SystemExit(2)


def start_up(settings: Settings, steps: Sequence[Callable[[Settings], None]]) -> None:
    """What a serving process does before it serves: wait for the services
    (:func:`require_services`), then each of ``steps`` in turn. A store that stops answering
    during a step (it answered a moment before) is waited for within the same
    ``HEIMDALL_START_WAIT_S`` and the step tried again — each is idempotent — instead of ending
    the start in a traceback; past the wait, one line naming the store, exit code 2. A store
    that refuses the step (a password changed since the services answered) ends it at once."""
    from inference_worker.storage.errors import TRANSIENT_ERRORS, first_line, store_name
    from inference_worker.storage.reachability import refusal_remedy

    waiting = StartWait(settings.start_wait_s)
    require_services(settings, waiting=waiting)
    for step in steps:
        while True:
            try:
                step(settings)
                break
            except _start_errors() as exc:
                store = "RabbitMQ"  # kombu's and amqp's errors, the others are the stores'
                if isinstance(exc, TRANSIENT_ERRORS):
                    store = {"redis": "Redis", "postgresql": "PostgreSQL"}[store_name(exc)]
                doing = step.__name__.replace("_", " ")
                remedy = refusal_remedy(store, exc)
                if remedy:
                    reason = f"{first_line(exc)} ({remedy})"
                    print(f"error: {store} refused ({doing}): {reason}", file=sys.stderr)
                    raise SystemExit(2) from None
                what = f"{store} did not answer ({doing}): "
                if not waiting.tell(what, what + first_line(exc)):
                    print(f"error: {what}{first_line(exc)}", file=sys.stderr)
                    raise SystemExit(2) from None
                waiting.pause()


def require_free_address(host: str, port: int, server: str) -> None:
    """Refuse, in one line with exit code 2, to start ``server`` on an address another process
    listens on: gunicorn would retry for five seconds and give up, Flower would end in a
    traceback."""
    bound_socket(host, port, server).close()


def bound_socket(host: str, port: int, server: str, family: int = 0) -> socket.socket:
    """A socket bound to ``host:port`` as ``server`` binds it, of the first address ``host``
    resolves to in ``family`` (0: any); an address taken, or one that does not resolve, is
    refused in one line with exit code 2."""
    try:  # an IPv6 address may come in brackets, as in a URL
        found = socket.getaddrinfo(host.strip("[]"), port, family, socket.SOCK_STREAM)
        family, kind, proto, _, address = found[0]
    except (socket.gaierror, UnicodeError) as exc:
        print(f"error: {server} cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    bound = socket.socket(family, kind, proto)
    bound.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
    try:
        bound.bind(address)
    except OSError as exc:
        bound.close()
        print(
            f"error: {server} cannot listen on {host}:{port}: {exc.strerror or exc} "
            "(another process holds it? choose another with --port)",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    return bound


def handed_listeners() -> list[int]:
    """The listening sockets' descriptors this process was handed instead of binding: by
    systemd's socket activation (``LISTEN_FDS`` for this pid) or by a shim's master executing a
    new one on SIGUSR2 (``GUNICORN_FD``). gunicorn serves on them; the address is taken."""
    from gunicorn import systemd

    count = systemd.listen_fds(unset_environment=False)
    if count:
        return list(range(systemd.SD_LISTEN_FDS_START, systemd.SD_LISTEN_FDS_START + count))
    if os.environ.get("GUNICORN_PID") and os.environ.get("GUNICORN_FD"):
        return [int(fd) for fd in os.environ["GUNICORN_FD"].split(",")]
    return []


def warn_other_address(handed: list[int], host: str, port: int) -> None:
    """Warn when none of the sockets handed to the shim is on the port its settings name (the
    address it announces for ``heimdall-inference check``)."""
    places = []  # ports, or the paths of Unix sockets
    for fd in handed:
        with socket.socket(fileno=os.dup(fd)) as handed_socket:
            name = handed_socket.getsockname()
        places.append(name[1] if isinstance(name, tuple) else name)
    if port not in places:
        log.warning(
            "the shim serves on %s, the socket(s) it was handed, not on %s:%d as its settings "
            "say (HEIMDALL_API_PORT): `heimdall-inference check` looks for it there",
            ", ".join(map(str, places)),
            host,
            port,
        )


def migrate_database(settings: Settings) -> None:
    """Bring the job schema to the newest revision; a refusal (a role without the right to
    create the schema or its tables, a standby that takes no writes) is one line, exit code 2."""
    import sqlalchemy.exc

    from inference_worker.cli.arguments import fail
    from inference_worker.storage.engine import UnknownMigration, engine_for, migrate
    from inference_worker.storage.errors import DatabaseReadOnly

    engine = engine_for(settings, pool_size=1)
    try:
        migrate(engine, settings.database_schema)
    except UnknownMigration as exc:
        fail(str(exc))
    except (
        sqlalchemy.exc.ProgrammingError,  # a right refused
        sqlalchemy.exc.InternalError,  # the server's own fault
        DatabaseReadOnly,  # a standby
    ) as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        remedy = ""
        if "permission denied" in reason:
            remedy = (
                " (grant the role CREATE on the database, or run `heimdall-inference migrate` "
                "once as one that has it)"
            )
        print(
            f"error: cannot migrate the job schema {settings.database_schema!r} as "
            f"{engine.url.username or 'this role'}: {reason}{remedy}",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    finally:
        engine.dispose()


def declare_queues(settings: Settings) -> None:
    """Declare the quorum queue and its dead-letter queue (replacing an empty older queue)."""
    import amqp.exceptions
    import kombu
    import kombu.utils.url

    from tasks.app import QueueMismatch
    from tasks.app import declare_queues as declare

    with kombu.Connection(settings.broker_url, connect_timeout=5) as connection:
        try:
            declare(connection, settings.queue, settings.max_deliveries)
        except QueueMismatch as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        except amqp.exceptions.AccessRefused as exc:  # the user may not configure the queues
            user = kombu.utils.url.url_to_parts(settings.broker_url).username or "guest"
            pattern = "^" + settings.queue.replace(".", "\\.")
            print(
                f"error: RabbitMQ refused to declare the queues: {exc.reply_text}. The service "
                "declares its queues (and every publisher and worker does again on connecting), "
                f"so its user needs the configure permission on them, e.g. `rabbitmqctl "
                f"set_permissions -p {connection.virtual_host} {user} '{pattern}' '.*' '.*'`",
                file=sys.stderr,
            )
            raise SystemExit(2) from None


def prepare_registry(settings: Settings) -> None:
    """In registry mode, make sure the served alias exists (an empty registry gets the
    reference model as champion) and its verified copy is cached (or, while the registry does
    not answer, that this host holds a copy of what it last named)."""
    from inference_worker.core.contract import ModelError
    from inference_worker.serving.registry import RegistryError, serving_model_dir

    try:
        serving_model_dir(settings, bootstrap=True, fall_back=True)
    except (ModelError, RegistryError) as exc:
        print(f"error: cannot use the model ({settings.model_source}): {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def check_model(settings: Settings) -> None:
    from inference_worker.core.contract import ModelError
    from inference_worker.serving.onnx_model import LocalizationModel
    from inference_worker.serving.registry import RegistryError, serving_model_dir

    try:
        model_dir = serving_model_dir(settings, bootstrap=True, fall_back=True)
        model = LocalizationModel(model_dir)
    except (ModelError, RegistryError) as exc:
        print(f"error: cannot use the model ({settings.model_source}): {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"model {model.metadata.name} {model.version} verified ({model_dir})")


def announce_model(settings: Settings) -> None:
    """Tell shims and producers which champion to check submissions against (Redis)."""
    from inference_worker.serving.registry import RegistryUnavailable
    from inference_worker.serving.reload import announce_serving_model
    from inference_worker.storage.errors import STORE_ERRORS
    from inference_worker.storage.redis_store import RedisStore, connect

    store = RedisStore(connect(settings.redis_url), settings.redis_prefix)
    try:
        announce_serving_model(settings, store)
    except STORE_ERRORS as exc:  # a full Redis must not keep a worker from draining it
        log.warning(
            "served model not announced in Redis (submissions are checked against the "
            "last announcement until the next reload): %s",
            exc,
        )
    except RegistryUnavailable as exc:  # what this host last knew may be older: not announced
        log.warning("served model not announced while the registry does not answer: %s", exc)
    finally:
        store.client.close()
