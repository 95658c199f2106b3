"""What ``heimdall-inference check`` looks at: whether a deployment keeps the work it accepts and
can serve it.

Each store answers and is set up to keep accepted work (:mod:`store_checks`: Redis neither evicts
nor forgets waiting captures, the job schema is this release's, the queues have the arguments
this release declares, nothing waits in the dead-letter queue or sits stuck), the model to serve
is intact, worker processes serve the queue, and the apis answer and see the stores
(:mod:`api_check`). The checks read: they create, migrate, replace and delete nothing — but
RabbitMQ tells of an alarm only a connection that publishes, so they publish two empty messages
that no queue takes; and as any reading of the registry does, they keep the aliases read on this
host, and while the registry does not answer a copy on this host that no longer matches its
sha256 is removed. Each answers within a few seconds whatever is down.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from inference_worker.serving.api_check import check_api, loopback
from inference_worker.serving.store_checks import (
    Finding,
    check_broker,
    check_database,
    check_redis,
    guarded,
)
from inference_worker.settings import Settings

__all__ = ["AREAS", "Finding", "check_api", "check_deployment"]

AREAS = ("rabbitmq", "redis", "postgresql", "model", "workers", "api", "host")
"""What the check looks at, in the order it reports."""
LOW_DISK_BYTES = 1 << 30


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
    redis_answers = not any(f.level == "fail" for f in redis_findings)
    if redis_answers:
        findings += run("workers", lambda: check_workers(settings, next(iter(named), None)))
    findings += run("api", lambda: check_api(settings, redis_answers=redis_answers))
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
        apis = [a for a in store.apis() if a.get("queue") == settings.queue]
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
    findings += _tdoa_bounds(settings, workers, apis)
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


def _tdoa_bounds(
    settings: Settings, workers: list[dict[str, Any]], apis: list[dict[str, Any]]
) -> list[Finding]:
    """A shim (or this host's producer client) that takes TDoA sets of more receivers than a
    worker process runs: each worker fails such a job by its own ``HEIMDALL_TDOA_MAX_RECEIVERS``.
    Processes of a release that does not announce its bound are left out."""
    bounds = [(w["tdoa_max_receivers"], w) for w in workers if _announced(w)]
    if not bounds:
        return []
    most, worker = min(bounds, key=lambda pair: pair[0])
    takers = [
        (a["tdoa_max_receivers"], f"the api at {a.get('url')}") for a in apis if _announced(a)
    ]
    takers.append((settings.tdoa_max_receivers, "a producer client with this host's settings"))
    over = sorted({who: n for n, who in takers if n > most}.items())
    if not over:
        return []
    named = "; ".join(f"{who} takes up to {n}" for who, n in over)
    return [
        Finding(
            "workers",
            "warn",
            f"TDoA sets of more than {most} receivers are accepted and then fail: worker "
            f"{worker['worker_id']} runs at most {most} (its HEIMDALL_TDOA_MAX_RECEIVERS), but "
            f"{named}; set the same bound on every host",
        )
    ]


def _announced(process: dict[str, Any]) -> bool:
    return isinstance(process.get("tdoa_max_receivers"), int)


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
    from inference_worker.serving.registry import CHAMPION

    return dict((worker.get("models") or {}).get(CHAMPION) or {})


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
    copies = cached_copies(folder / "model-cache")
    if free < LOW_DISK_BYTES:
        findings.append(
            Finding(
                "host",
                "warn",
                f"{free / 2**20:.0f} MiB free where the data folder is"
                + (f"; {copies} (`heimdall-inference models prune-cache`)" if copies else ""),
            )
        )
    if not settings.api_keys and not loopback(settings.api_host):
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
            Finding(
                "host",
                "ok",
                f"data folder {folder} writable, {free / 2**30:.1f} GiB free"
                + (f"; {copies}" if copies else ""),
            )
        )
    return findings


def cached_copies(cache: Path) -> str | None:
    """How many registry copies this host keeps and their size, or ``None`` for none."""
    versions = [p for p in cache.glob("*/*") if p.is_dir() and p.name.isdigit()]
    if not versions:
        return None
    from inference_worker.serving.local_copies import folder_size

    size = sum(folder_size(p) for p in versions)
    kept = f"{len(versions)} registry cop{'y' if len(versions) == 1 else 'ies'}"
    return f"{kept} kept ({size / 1e6:.1f} MB)"
