"""What ``heimdall-inference check`` looks at: whether a deployment keeps the work it accepts and
can serve it.

Each store answers and is set up to keep accepted work (:mod:`store_checks`: Redis neither evicts
nor forgets waiting captures, the job schema is this release's, the queues have the arguments
this release declares, nothing waits in the dead-letter queue or sits stuck), the model to serve
is intact, worker processes serve the queue, and the api on this host answers and sees the
stores (its settings may differ from the check's). The checks read: they create, migrate, replace
and delete nothing — but RabbitMQ tells of an alarm only a connection that publishes, so they
publish two empty messages that no queue takes; and as any reading of the registry does, they
keep the aliases read on this host, and while the registry does not answer a copy on this host
that no longer matches its sha256 is removed. Each answers within a few seconds whatever is down.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from inference_worker.serving.registry import CHAMPION
from inference_worker.serving.store_checks import (
    Finding,
    Level,
    check_broker,
    check_database,
    check_redis,
    guarded,
)
from inference_worker.settings import Settings

__all__ = ["AREAS", "Finding", "check_deployment"]

AREAS = ("rabbitmq", "redis", "postgresql", "model", "workers", "api", "host")
"""What the check looks at, in the order it reports."""
LOW_DISK_BYTES = 1 << 30
API_TIMEOUT_S = 5.0
"""How long the api has to answer ``/health``, which asks every store and the registry."""


def check_deployment(settings: Settings, skip: Collection[str] = ()) -> list[Finding]:
    """Every finding of the :data:`AREAS` not in ``skip``, in their order."""

    def run(area: str, check: Callable[[], list[Finding]]) -> list[Finding]:
        return [] if area in skip else guarded(area, check)

    findings = run("rabbitmq", lambda: check_broker(settings))
    redis_findings = run("redis", lambda: check_redis(settings))
    findings += redis_findings
    findings += run("postgresql", lambda: check_database(settings))
    named: list[str] = []  # the champion workers should serve, when the model check knows it
    findings += run("model", lambda: check_model(settings, named))
    if not any(f.level == "fail" for f in redis_findings):
        findings += run("workers", lambda: check_workers(settings, next(iter(named), None)))
    findings += run("api", lambda: check_api(settings))
    findings += run("host", lambda: check_host(settings))
    return findings


# --- the model --------------------------------------------------------------------------------
def check_model(settings: Settings, named: list[str] | None = None) -> list[Finding]:
    """The model to serve is intact; in registry mode, the version its alias names and this
    host's copy of it. What workers should serve is appended to ``named``: the registry version
    the alias names, or the model folder's sha256."""
    from inference_worker.core.contract import ModelError, file_sha256, load_metadata
    from inference_worker.serving.registry import (
        RegistryError,
        RegistryUnavailable,
        last_known_copy,
        open_registry,
    )

    if settings.model_source != "registry":
        try:
            metadata = load_metadata(Path(settings.model_dir), verify=True)
        except ModelError as exc:
            return [Finding("model", "fail", str(exc))]
        if named is not None:
            named.append(metadata.sha256)
        return [
            Finding(
                "model",
                "ok",
                f"{metadata.name} {metadata.version} in {settings.model_dir}, files intact",
            )
        ]
    alias = settings.model_alias
    try:
        registry = open_registry(settings)
        found = registry.resolve(alias)
    except RegistryUnavailable as outage:
        try:
            known, _ = last_known_copy(settings, alias, outage)
        except RegistryUnavailable:
            return [Finding("model", "fail", f"{outage}; this host holds no copy to serve")]
        except ModelError as exc:
            return [Finding("model", "fail", f"{outage}; {exc}")]
        return [
            Finding(
                "model",
                "warn",
                f"{outage}; processes starting on this host serve version {known.version}, "
                f"which {alias!r} named when this host last read the registry",
            )
        ]
    except RegistryError as exc:
        if not open_registry(settings).versions():
            return [
                Finding(
                    "model",
                    "warn",
                    f"the registry holds no version of {settings.model_name} yet: the first "
                    f"worker or api start registers the packaged model as {alias!r}",
                )
            ]
        return [
            Finding(
                "model",
                "fail",
                f"{exc}: `heimdall-inference models promote VERSION --alias {alias}`",
            )
        ]
    if named is not None:
        named.append(found.version)
    described = f"{settings.model_name} version {found.version} ({alias!r})"
    copy = registry.copies.target(found.version) / "model"
    if not (copy / "model.onnx").exists():
        return [Finding("model", "ok", f"{described}; no copy on this host yet (fetched at start)")]
    actual = file_sha256(copy / "model.onnx")
    if actual != found.sha256:
        return [
            Finding(
                "model",
                "warn",
                f"{described}: this host's copy has sha256 {actual}, the registry says "
                f"{found.sha256}; the next process to load it fetches a sound one",
            )
        ]
    return [Finding("model", "ok", f"{described}; this host's copy verified")]


# --- workers ----------------------------------------------------------------------------------
def check_workers(settings: Settings, named: str | None = None) -> list[Finding]:
    """Worker processes serve the queue, without errors, at the reload asked for, and (when
    ``named``: the registry version the alias names, or the model folder's sha256) that
    champion."""
    from inference_worker.storage.redis_store import RedisStore, connect

    store = RedisStore(connect(settings.redis_url), settings.redis_prefix)
    try:
        generation, _ = store.serving_state()
        workers = [w for w in store.workers() if w.get("queue") == settings.queue]
    finally:
        store.client.close()
    if not workers:
        return [Finding("workers", "warn", f"no worker process serves queue {settings.queue!r}")]
    findings = []
    for worker in workers:
        if worker.get("last_error"):
            findings.append(
                Finding("workers", "warn", f"{worker['worker_id']}: {worker['last_error']}")
            )
        elif worker.get("generation") != generation:
            findings.append(
                Finding(
                    "workers",
                    "warn",
                    f"{worker['worker_id']} serves reload {worker.get('generation')}, the "
                    f"operators asked for {generation} (it reloads between jobs)",
                )
            )
    from_folder = settings.model_source != "registry"
    behind = sorted(
        {
            served
            for w in workers
            if (served := _champion_sha256(w) if from_folder else _champion_version(w))
            not in (None, named)
        }
    )
    if named is not None and behind and from_folder:
        findings.append(
            Finding(
                "workers",
                "warn",
                f"worker processes serve a model of sha256 {', '.join(s[:12] for s in behind)}… "
                f"where {settings.model_dir} holds {named[:12]}… (the folder changed since they "
                "loaded it, or their hosts' folders differ): `heimdall-inference models reload` "
                "loads the folder again",
            )
        )
    elif named is not None and behind:
        findings.append(
            Finding(
                "workers",
                "warn",
                f"worker processes serve registry version {', '.join(behind)} where "
                f"{settings.model_alias!r} names {named}: `heimdall-inference models reload` "
                "moves them to it",
            )
        )
    hosts = sorted({str(w["worker_id"]).rsplit(":", 1)[0] for w in workers})
    versions = sorted({_served(w) for w in workers})
    findings.insert(
        0,
        Finding(
            "workers",
            "ok",
            f"{len(workers)} worker process(es) on {', '.join(hosts)} serve queue "
            f"{settings.queue!r}, champion {', '.join(versions)}",
        ),
    )
    return findings


def _loopback(host: str) -> bool:
    """Whether ``host`` is an address only this machine reaches (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a name: it may resolve to any address
        return False


def _served(worker: dict[str, Any]) -> str:
    """What a worker serves as champion, in words: the model's version, and the registry's."""
    model = f"model {worker.get('model_version')}"
    version = _champion_version(worker)
    return model if version is None else f"registry version {version} ({model})"


def _champion_version(worker: dict[str, Any]) -> str | None:
    """The registry version a worker's heartbeat says it serves as champion (None from a
    model folder)."""
    version = _champion(worker).get("registry_version")
    return None if version is None else str(version)


def _champion_sha256(worker: dict[str, Any]) -> str | None:
    """The sha256 of the model a worker's heartbeat says it serves as champion."""
    sha256 = _champion(worker).get("sha256")
    return None if sha256 is None else str(sha256)


def _champion(worker: dict[str, Any]) -> dict[str, Any]:
    return dict((worker.get("models") or {}).get(CHAMPION) or {})


# --- the api on this host ---------------------------------------------------------------------
def check_api(settings: Settings) -> list[Finding]:
    """The HTTP shim this host's settings describe answers ``/health``, and how it sees the
    stores and the model (its settings may differ from the check's)."""
    host = settings.api_host
    if host in ("", "0.0.0.0", "::"):  # listening everywhere: loopback reaches it
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    url = f"http://{host}:{settings.api_port}/health"
    request = urllib.request.Request(url)
    key = _a_key(settings)
    if key:  # the reasons of an unhealthy answer are shown to a caller with a key only
        request.add_header("Authorization", f"Bearer {key}")
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # this host
    try:
        with no_proxy.open(request, timeout=API_TIMEOUT_S) as reply:
            status, raw = reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except OSError as exc:
        reason = getattr(exc, "reason", exc)
        return [
            Finding(
                "api",
                "warn",
                f"no api answers at {url} ({reason}): start `heimdall-inference api` on this "
                "host, or look where it runs (HEIMDALL_API_HOST and HEIMDALL_API_PORT)",
            )
        ]
    try:
        body = json.loads(raw)
        state = body["status"]
    except (ValueError, KeyError, TypeError):
        return [Finding("api", "warn", f"{url} answers {status}, but not as this service's api")]
    failing = [
        f"{name}: {check.get('error') or check.get('problems') or 'not ok'}"
        for name, check in (body.get("checks") or {}).items()
        if isinstance(check, dict) and not check.get("ok", True)
    ]
    said = f" ({'; '.join(str(f) for f in failing)})" if failing else ""
    if not said and key is None and settings.api_keys:
        said = " (its reasons are shown to a caller with a key: set HEIMDALL_ADMIN_TOKEN)"
    if state == "ok":
        return [Finding("api", "ok", f"{url} answers: ok")]
    level: Level = "fail" if status >= 500 else "warn"
    return [Finding("api", level, f"{url} answers {state}{said}")]


def _a_key(settings: Settings) -> str | None:
    """A key the api takes, from this host's settings: the admin token, or a plain key."""
    if settings.admin_token.get_secret_value():
        return settings.admin_token.get_secret_value()
    return next((k.key.get_secret_value() for k in settings.api_keys if k.key is not None), None)


# --- this host --------------------------------------------------------------------------------
def check_host(settings: Settings) -> list[Finding]:
    findings = []
    folder = Path(settings.data_dir)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("/"))
    if not os.access(existing, os.W_OK | os.X_OK):
        findings.append(
            Finding(
                "host",
                "warn",
                f"the data folder {folder} cannot be written: the registry's copies cannot be "
                "kept, nor served from while the registry does not answer",
            )
        )
    free = shutil.disk_usage(existing).free
    if free < LOW_DISK_BYTES:
        findings.append(
            Finding("host", "warn", f"{free / 2**20:.0f} MiB free where the data folder is")
        )
    if not settings.api_keys and not _loopback(settings.api_host):
        findings.append(
            Finding(
                "host",
                "warn",
                f"the api listens on {settings.api_host} without keys (HEIMDALL_API_KEYS): "
                "whoever reaches it may submit and read every job",
            )
        )
    if not findings:
        findings.append(
            Finding("host", "ok", f"data folder {folder} writable, {free / 2**30:.1f} GiB free")
        )
    return findings
