"""A host's verified copies of registry versions, and what each alias named when it last looked.

Every version fetched from the registry is kept under ``<data_dir>/model-cache/<name>/<version>``
with the registry's record of it (``version.json``: its sha256 among others), and every reading
of the aliases leaves ``aliases.json`` beside them. A worker process that starts while the
registry does not answer (a pool process replacing one that died, a worker restarted during the
registry's maintenance) serves from these: the versions the aliases named when this host last
read them, each copy verified again against its sha256 before use.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inference_worker.core.contract import ModelError, file_sha256, load_metadata
from inference_worker.urls import redact_secrets

if TYPE_CHECKING:
    from inference_worker.serving.registry_store import RegistryUnavailable

log = logging.getLogger(__name__)

ALIASES_FILE = "aliases.json"
VERSION_FILE = "version.json"
LOCK_FILE = ".lock"
ALIASES_LOCK_FILE = ".aliases.lock"


@dataclass(frozen=True)
class RegisteredVersion:
    """A registry version as the registry describes it (kept beside its copy as well)."""

    version: str
    """The registry's version number, as a string."""
    model_version: str
    """The version written in the model's own metadata."""
    sha256: str
    aliases: tuple[str, ...]
    source: str
    description: str
    run_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "model_version": self.model_version,
            "sha256": self.sha256,
            "aliases": list(self.aliases),
            "description": self.description,
            "source": self.source,
            "run_id": self.run_id,
        }

    @classmethod
    def from_json(cls, record: dict[str, Any], aliases: tuple[str, ...] = ()) -> RegisteredVersion:
        return cls(
            version=str(record["version"]),
            model_version=str(record.get("model_version", "")),
            sha256=str(record["sha256"]),
            aliases=aliases,
            source=str(record.get("source", "")),
            description=str(record.get("description", "")),
            run_id=record.get("run_id"),
        )


@dataclass(frozen=True)
class CachedCopy:
    """A folder of the cache: a version's copy, or a download a killed process left behind."""

    name: str
    path: Path
    size_bytes: int


@dataclass
class Pruned:
    """What a prune removed (or, on a dry run, would remove) and what it kept."""

    removed: list[CachedCopy] = field(default_factory=list)
    kept: list[CachedCopy] = field(default_factory=list)


class NotKnownHere(LookupError):
    """This host holds no verified copy for the reference (never fetched, or for another
    registry)."""


class LocalCopies:
    """The copies of one registered model kept on this host, for the registry at ``registry``.

    Args:
        root: the model's folder in the cache (``<data_dir>/model-cache/<name>``).
        registry: the registry's URI as shown (secrets redacted); what the aliases named in
            another registry is never served for this one.
    """

    def __init__(self, root: Path, registry: str) -> None:
        self.root = root
        self.registry = registry

    def target(self, version: str) -> Path:
        """Where ``version`` is kept; its model folder is ``target(version) / "model"``."""
        return self.root / version

    def remember_aliases(self, aliases: dict[str, str]) -> None:
        """Keep what the registry's aliases name (written only when that changed)."""
        self._keep(self.root / ALIASES_FILE, {"aliases": aliases})

    def remember_aliases_of(self, version: str, aliases: list[str]) -> None:
        """Keep that ``aliases`` name ``version``, and that no other alias does (one version
        read with its aliases; written only when that changed)."""

        def merged(known: dict[str, str]) -> dict[str, str]:
            return {a: v for a, v in known.items() if v != version} | dict.fromkeys(
                aliases, version
            )

        known = self.last_read_aliases()
        if merged(known) == known:  # the usual case: nothing to write, no lock taken
            return
        try:  # read again under the lock: another process's merge since is kept, not lost
            with self._aliases_locked():
                self.remember_aliases(merged(self.last_read_aliases()))
        except OSError as exc:
            log.warning(
                "cannot keep %s (needed to serve while the registry is down): %s",
                self.root / ALIASES_FILE,
                exc,
            )

    def remember_version(self, found: RegisteredVersion) -> None:
        """Keep the registry's record of a version whose copy was just verified."""
        record = {k: v for k, v in found.to_json().items() if k != "aliases"}  # aliases move
        self._keep(self.target(found.version) / VERSION_FILE, record)

    def verify(self, version: str, sha256: str) -> Path:
        """The copy of ``version`` checked against ``sha256`` and its own metadata.

        Raises:
            ModelError: the files do not match; the copy is removed, so a sound one can be
                fetched again.
        """
        model_dir = self.target(version) / "model"
        try:
            actual = file_sha256(model_dir / "model.onnx")  # read once: both checks use it
            if actual != sha256:
                raise ModelError(
                    f"version {version}: model.onnx has sha256 {actual}, the registry says {sha256}"
                )
            load_metadata(model_dir, digest=actual)
        except (ModelError, FileNotFoundError) as exc:
            shutil.rmtree(self.target(version), ignore_errors=True)
            raise ModelError(f"{self.root.name} version {version} refused: {exc}") from None
        return model_dir

    def last_known(self, reference: str) -> tuple[RegisteredVersion, Path]:
        """The version ``reference`` names (a number, or an alias as this host last read it)
        and its copy, verified again.

        Raises:
            NotKnownHere: no record or no copy of it on this host for this registry.
            ModelError: the copy no longer matches its sha256 (it is removed).
        """
        version = reference
        if not reference.isdigit():
            aliases = self._read(self.root / ALIASES_FILE).get("aliases", {})
            if reference not in aliases:
                raise NotKnownHere(f"no alias {reference!r} read on this host")
            version = str(aliases[reference])
        record = self._read(self.target(version) / VERSION_FILE)
        if "sha256" not in record:
            raise NotKnownHere(f"no verified copy of version {version} on this host")
        found = RegisteredVersion.from_json(record, () if reference.isdigit() else (reference,))
        return found, self.verify(version, found.sha256)

    @contextlib.contextmanager
    def _aliases_locked(self) -> Iterator[None]:
        """Hold the lock of ``aliases.json``'s merges (its own: a merge never waits on a copy
        being fetched)."""
        self.root.mkdir(parents=True, exist_ok=True)
        lock = os.open(self.root / ALIASES_LOCK_FILE, os.O_RDONLY | os.O_CREAT, 0o666)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield
        finally:
            os.close(lock)

    @contextlib.contextmanager
    def locked(self, *, exclusive: bool = False) -> Iterator[None]:
        """Hold the model folder's lock: shared while fetching a copy, exclusive to prune."""
        self.root.mkdir(parents=True, exist_ok=True)
        # Opened for reading: a lock file another user made (an operator's command) still locks.
        lock = os.open(self.root / LOCK_FILE, os.O_RDONLY | os.O_CREAT, 0o666)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(lock)  # releases the lock

    def held(self, version: str) -> int | None:
        """Bytes of this host's verified copy of ``version`` fetched from this registry, or
        None when it holds none (never fetched, pruned, or a download cut short)."""
        folder = self.target(version)
        if "sha256" not in self._read(folder / VERSION_FILE):
            return None
        return folder_size(folder) if (folder / "model" / "model.onnx").is_file() else None

    def last_read_aliases(self) -> dict[str, str]:
        """What the aliases named when this host last read them (empty if never)."""
        aliases = self._read(self.root / ALIASES_FILE).get("aliases", {})
        return {str(a): str(v) for a, v in aliases.items()} if isinstance(aliases, dict) else {}

    def prune(self, keep: set[str], keep_newest: int, *, dry_run: bool = False) -> Pruned:
        """Remove the copies of versions not in ``keep`` beyond the ``keep_newest`` highest
        others, and downloads that killed processes left half done. Copies fetched from
        another registry (their ``version.json`` names it) are kept: its aliases are not known.

        Holds the exclusive lock: no process is fetching or verifying meanwhile, so every
        hidden folder (a download's ``.<version>-…``, a prune's ``.pruned-…``) is a leftover.
        """
        pruned = Pruned()
        with self.locked(exclusive=True):
            folders = sorted(p for p in self.root.iterdir() if p.is_dir())
            versions = sorted(
                (p for p in folders if p.name.isdigit()), key=lambda p: int(p.name), reverse=True
            )
            others = [p for p in versions if p.name not in keep and not self._elsewhere(p)]
            for path in sorted(folders, key=_listed):
                if not path.name.startswith(".") and not path.name.isdigit():
                    continue  # not the cache's: left alone
                copy = CachedCopy(path.name, path, folder_size(path))
                leftover = path.name.startswith(".")
                if leftover or (path in others[keep_newest:]):
                    pruned.removed.append(copy)
                    if not dry_run:
                        _remove_whole(path)
                else:
                    pruned.kept.append(copy)
        return pruned

    def _elsewhere(self, folder: Path) -> bool:
        """A copy fetched from another registry (its versions are numbered on their own)."""
        try:
            record = json.loads((folder / VERSION_FILE).read_text())
        except (OSError, ValueError):
            return False  # no record: it cannot serve an outage, and is this cache's
        return isinstance(record, dict) and record.get("registry") != self.registry

    def _keep(self, path: Path, content: dict[str, Any]) -> None:
        try:
            _write_if_changed(path, {"registry": self.registry, **content})
        except OSError as exc:  # the caller's work is done; only serving through an outage is lost
            log.warning(
                "cannot keep %s (needed to serve while the registry is down): %s", path, exc
            )

    def _read(self, path: Path) -> dict[str, Any]:
        try:
            content = json.loads(path.read_text())
        except (OSError, ValueError):  # never written, or not by this code: nothing known
            return {}
        if not isinstance(content, dict) or content.get("registry") != self.registry:
            return {}
        return content


def cache_dir(settings: Any) -> Path:
    return Path(settings.data_dir) / "model-cache"


def copy_refusal(version: str, folder: Path, exc: Exception) -> str:
    """One line for a download that could not be kept on this host (MLflow lists each file's
    failure on lines of its own: the last says why)."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    said = f"version {version} cannot be kept in {folder}: {lines[-1] if lines else exc}"
    if "No space left" in said:
        said += " (`heimdall-inference models prune-cache` frees this host's older copies)"
    return said


def last_known_copy(
    settings: Any, reference: str, outage: RegistryUnavailable
) -> tuple[RegisteredVersion, Path]:
    """While the registry does not answer: the version ``reference`` named when this host last
    read the registry, and its copy, verified again.

    Raises:
        RegistryUnavailable: ``outage``, when this host holds no copy for ``reference``.
        ModelError: the copy no longer matches its sha256 (it is removed).
    """
    copies = LocalCopies(
        cache_dir(settings) / settings.model_name, redact_secrets(settings.resolved_registry_uri)
    )
    try:
        return copies.last_known(reference)
    except NotKnownHere:
        raise outage from None


def _listed(folder: Path) -> tuple[int, str]:
    """Leftover downloads first, then versions by number."""
    return (int(folder.name), "") if folder.name.isdigit() else (-1, folder.name)


def _remove_whole(folder: Path) -> None:
    """Remove ``folder`` so that no half of it is left where it was: renamed to a hidden
    leftover first (a prune killed meanwhile leaves that, which the next prune removes),
    instead of a copy without its ``model.json`` that a fetch would refuse."""
    doomed = folder.with_name(f".pruned-{folder.name}-{uuid.uuid4().hex[:8]}")
    try:
        folder.rename(doomed)
    except OSError:
        doomed = folder
    shutil.rmtree(doomed, ignore_errors=True)


def folder_size(folder: Path) -> int:
    """Bytes of the files under ``folder`` (links not followed)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _write_if_changed(path: Path, content: dict[str, Any]) -> None:
    """Write ``content`` as JSON in one step (readers see the old file or the new one)."""
    try:
        if json.loads(path.read_text()) == content:
            return
    except (OSError, ValueError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as file:
            json.dump(content, file, indent=1, sort_keys=True)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
