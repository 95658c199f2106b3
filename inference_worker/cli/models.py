"""The ``models`` command: the model registry and reloads."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from inference_worker.settings import Settings

if TYPE_CHECKING:  # the command's modules load when it runs: `heimdall-inference --help` is quick
    from inference_worker.serving.local_copies import Pruned
    from inference_worker.storage.database import JobStore
    from inference_worker.storage.redis_store import RedisStore

T = TypeVar("T")


def cmd_models(settings: Settings, args: argparse.Namespace) -> None:
    from inference_worker.core.contract import ModelError
    from inference_worker.serving.aliases import alias_refusal, served_alias_refusal
    from inference_worker.serving.registry import RegistryError, open_registry

    if args.action not in ("list", "reload", "prune-cache") and not args.target:
        print(f"error: models {args.action} needs a target (see --help)", file=sys.stderr)
        raise SystemExit(2)
    if args.action == "promote" and not args.alias:
        print(
            "error: models promote VERSION needs --alias (champion, challenger, ...)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    refusal = alias_refusal(args.alias) if args.alias else None
    if refusal is not None:  # before registering: a version left without its alias otherwise
        print(f"error: {refusal}", file=sys.stderr)
        raise SystemExit(2)
    try:
        registry = open_registry(settings)
        if args.action == "list":
            versions = registry.versions()
            held = {v.version: registry.copies.held(v.version) for v in versions}
            if args.json:
                listed = [{**v.to_json(), "copy_bytes": held[v.version]} for v in versions]
                print(json.dumps(listed, indent=2))
                return
            if not versions:
                print(f"no versions of {registry.name} registered")
            for v in versions:
                aliases = ", ".join(v.aliases) or "-"
                size = held[v.version]
                here = f"{size / 1e6:.1f} MB" if size is not None else "-"
                print(
                    f"{v.version:>4}  {v.model_version:<12} aliases: {aliases:<22} "
                    f"copy here: {here:<9} {v.description}"
                )
        elif args.action == "register":
            registered = registry.register(Path(args.target), description=args.description or "")
            print(f"registered {args.target} as version {registered.version}")
            if args.alias:
                registry.set_alias(args.alias, registered.version)
                print(f"{args.alias} -> version {registered.version}")
            mirror(settings)
        elif args.action == "promote":
            registry.set_alias(args.alias, args.target)
            print(f"{args.alias} -> version {args.target}")
            mirror(settings)
        elif args.action == "demote":
            refusal = served_alias_refusal(settings, args.target)
            if refusal is not None:
                raise RegistryError(refusal)
            registry.remove_alias(args.target)
            print(f"alias {args.target} removed")
            mirror(settings)
        elif args.action == "reload":
            reload(settings, args.challenger_fraction)
        elif args.action == "prune-cache":
            print_pruned(*registry.prune_cache(args.keep, dry_run=args.dry_run), args.dry_run)
        elif args.action == "verify":
            found, model_dir = registry.fetch(args.target)
            print(f"version {found.version} verified (sha256 {found.sha256[:12]}…): {model_dir}")
    except (RegistryError, ModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def print_pruned(pruned: Pruned, named: set[str], dry_run: bool) -> None:
    """One line a removed folder, then what stays."""
    verb = "would remove" if dry_run else "removed"
    for copy in pruned.removed:
        what = (
            f"a folder a killed download or prune left ({copy.name})"
            if copy.name.startswith(".")
            else f"version {copy.name}"
        )
        print(f"{verb} {what}: {megabytes(copy.size_bytes)}")
    kept = ", ".join(
        f"{c.name} (an alias names it)" if c.name in named else c.name for c in pruned.kept
    )
    freed = megabytes(sum(c.size_bytes for c in pruned.removed))
    copies = f"{len(pruned.kept)} cop{'y' if len(pruned.kept) == 1 else 'ies'}"
    held = megabytes(sum(c.size_bytes for c in pruned.kept))
    print(
        f"{'would free' if dry_run else 'freed'} {freed}; kept {copies} ({held})"
        + (f": versions {kept}" if kept else "")
    )


def megabytes(size_bytes: int) -> str:
    return f"{size_bytes / 1e6:.1f} MB"


def with_stores(settings: Settings, use: Callable[[JobStore, RedisStore], T]) -> T:
    """Call ``use`` with the job store and Redis; a store that does not answer ends the command.

    The job schema is brought up to date first, as the worker and the shim do when they start:
    a model registered before the service ever ran is mirrored like any other.
    """
    from inference_worker.cli.bootstrap import migrate_database
    from inference_worker.storage.database import JobStore
    from inference_worker.storage.engine import engine_for
    from inference_worker.storage.errors import TRANSIENT_ERRORS, describe_failure
    from inference_worker.storage.redis_store import RedisStore, connect

    migrate_database(settings)
    engine = engine_for(settings, pool_size=1)
    store = RedisStore(connect(settings.redis_url), settings.redis_prefix)
    try:
        return use(JobStore(engine), store)
    except TRANSIENT_ERRORS as exc:
        urls = {"database_url": settings.database_url, "redis_url": settings.redis_url}
        print(f"error: {describe_failure(exc, **urls)}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        store.client.close()
        engine.dispose()


def mirror(settings: Settings) -> None:
    """After a change to the registry: its versions and aliases into ``model_versions``."""
    from inference_worker.serving.reload import mirror_registry

    with_stores(settings, lambda jobs, _: mirror_registry(settings, jobs))


def reload(settings: Settings, challenger_fraction: float | None) -> None:
    """The reload ``POST /model/reload`` does: verify, mirror the registry, ask the workers."""
    from inference_worker.serving.reload import request_reload

    asked = with_stores(
        settings, lambda jobs, store: request_reload(settings, jobs, store, challenger_fraction)
    )
    print(
        f"reload requested (generation {asked['generation']}): champion version "
        f"{asked['champion']}, challenger {asked['challenger'] or 'none'} with "
        f"{asked['challenger_fraction']:.0%} of jobs; each worker process swaps between jobs"
    )
