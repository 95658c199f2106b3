"""The model registry: MLflow model versions with aliases, and verified local copies.

The only module that imports mlflow, with :mod:`~inference_worker.serving.registry_store`
(reaching the registry's store). Each registered version holds the model folder
(``model.onnx`` + ``model.json``) as run artifacts and its sha256 as a tag. Aliases
(``champion``, ``challenger``) name the versions in use; registry stages are deprecated.
A version is downloaded once into a local cache and its sha256 checked before anyone uses it;
while the registry does not answer, worker processes serve from those copies
(:mod:`~inference_worker.serving.local_copies`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from inference_worker.core.contract import ModelError
from inference_worker.serving.aliases import CHALLENGER as CHALLENGER  # callers import them here
from inference_worker.serving.aliases import CHAMPION, alias_refusal
from inference_worker.serving.local_copies import (
    LocalCopies,
    Pruned,
    RegisteredVersion,
    copy_refusal,
)
from inference_worker.serving.local_copies import (  # callers import them here
    cache_dir as cache_dir,
)
from inference_worker.serving.local_copies import (
    last_known_copy as last_known_copy,
)
from inference_worker.serving.registry_store import (
    RegistryError,
    apply_mlflow_defaults,
    is_store_failure,
    opening,
    store_failures,
    store_set_up,
    store_uri,
)
from inference_worker.serving.registry_store import (
    RegistryUnavailable as RegistryUnavailable,  # raised through here: callers import it here
)
from inference_worker.urls import redact_secrets

log = logging.getLogger(__name__)

EXPERIMENT = "heimdall-models"


P = ParamSpec("P")
R = TypeVar("R")


def _store_call(method: Callable[P, R]) -> Callable[P, R]:
    """A registry method whose store failures are :class:`RegistryUnavailable`."""

    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        registry = args[0]
        assert isinstance(registry, ModelRegistry)
        with registry.answering():
            return method(*args, **kwargs)

    return call


class ModelRegistry:
    def __init__(
        self, uri: str, *, name: str, cache_dir: Path, artifact_location: str | None = None
    ) -> None:
        from mlflow import MlflowClient

        # MLflow announces creating and upgrading its own tables at INFO on a store's first use,
        # in every command that opens the registry: a store's housekeeping, not the command's.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        apply_mlflow_defaults()
        self.name = name
        self.cache_dir = cache_dir
        self.artifact_location = artifact_location
        self.shown_uri = redact_secrets(uri)
        self.uri = store_uri(uri)
        self.copies = LocalCopies(cache_dir / name, self.shown_uri)
        with opening(self.uri) as first, store_failures(self.shown_uri, limited=not first):
            self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
            if first:  # the registry's half is set up on its first call: one here, in turn
                self.client.search_registered_models(max_results=1)

    def answering(self) -> contextlib.AbstractContextManager[None]:
        """MLflow's errors of a store that stopped answering as :class:`RegistryUnavailable`."""
        return store_failures(self.shown_uri)

    # --- reading ----------------------------------------------------------------------------
    @_store_call
    def aliases(self) -> dict[str, str]:
        from mlflow.exceptions import MlflowException

        try:
            aliases = self.client.get_registered_model(self.name).aliases
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":  # not an empty registry: a failure
                raise
            aliases = {}
        named = {alias: str(version) for alias, version in aliases.items()}
        self.copies.remember_aliases(named)
        return named

    @_store_call
    def versions(self) -> list[RegisteredVersion]:
        by_version: dict[str, list[str]] = {}
        for alias, version in self.aliases().items():
            by_version.setdefault(str(version), []).append(alias)
        found = self.client.search_model_versions(f"name='{self.name}'")
        return sorted(
            (self._describe(v, by_version.get(str(v.version), [])) for v in found),
            key=lambda v: int(v.version),
        )

    @_store_call
    def resolve(self, reference: str) -> RegisteredVersion:
        """A version from its number or one of its aliases."""
        from mlflow.exceptions import MlflowException

        try:
            if reference.isdigit():
                found = self.client.get_model_version(self.name, reference)
            else:
                found = self.client.get_model_version_by_alias(self.name, reference)
        except MlflowException as exc:
            if is_store_failure(exc):
                raise
            raise RegistryError(
                f"{self.name}: no version or alias {reference!r} ({exc.error_code})"
            ) from None
        aliases = [str(a) for a in found.aliases or ()]  # read with the version, in one call
        if reference in aliases or (reference.isdigit() and aliases):
            self.copies.remember_aliases_of(str(found.version), aliases)
        else:  # none listed: a version no alias names, or a store that lists none with it
            aliases = [a for a, v in self.aliases().items() if v == str(found.version)]
        return self._describe(found, aliases)

    @staticmethod
    def _describe(found: Any, aliases: list[str]) -> RegisteredVersion:
        tags = dict(found.tags or {})
        return RegisteredVersion(
            version=str(found.version),
            model_version=tags.get("model_version", ""),
            sha256=tags.get("sha256", ""),
            aliases=tuple(sorted(aliases)),
            source=found.source,
            description=found.description or "",
            run_id=found.run_id,
        )

    # --- writing ----------------------------------------------------------------------------
    @_store_call
    def register(self, model_dir: Path, description: str = "") -> RegisteredVersion:
        """Register a model folder as a new version: refused, as a worker would refuse it, if
        its sha256 does not match or it cannot locate a capture (its warm-up)."""
        from mlflow.exceptions import MlflowException

        from inference_worker.serving.onnx_model import LocalizationModel

        metadata = LocalizationModel(model_dir).metadata
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else self.client.create_experiment(EXPERIMENT, artifact_location=self.artifact_location)
        )
        run = self.client.create_run(experiment_id, tags={"model_version": metadata.version})
        for name in ("model.onnx", "model.json"):
            self.client.log_artifact(run.info.run_id, str(model_dir / name), artifact_path="model")
        self.client.set_terminated(run.info.run_id)
        try:
            self.client.create_registered_model(self.name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        created = self.client.create_model_version(
            self.name,
            f"{run.info.artifact_uri}/model",
            run_id=run.info.run_id,
            tags={"sha256": metadata.sha256, "model_version": metadata.version},
            description=description or f"{metadata.name} {metadata.version}",
        )
        log.info("registered %s %s as version %s", metadata.name, metadata.version, created.version)
        return self._describe(created, [])

    @_store_call
    def set_alias(self, alias: str, version: str) -> None:
        refusal = alias_refusal(alias)
        if refusal is not None:  # MLflow's own refusal was a traceback
            raise RegistryError(refusal)
        self.resolve(version)  # a clear error for an unknown version
        self.client.set_registered_model_alias(self.name, alias, version)

    @_store_call
    def remove_alias(self, alias: str) -> None:
        if alias not in self.aliases():
            raise RegistryError(f"{self.name}: no alias {alias!r}")
        self.client.delete_registered_model_alias(self.name, alias)

    @_store_call
    def bootstrap(self, reference_dir: Path) -> None:
        """With an empty registry, register the reference model and make it champion.

        Processes starting together take turns, so the reference is registered once."""
        with store_set_up(self.uri):
            if self.client.search_model_versions(f"name='{self.name}'"):
                return
            registered = self.register(
                reference_dir, description="reference model shipped with the service"
            )
            self.set_alias(CHAMPION, registered.version)
        log.info(
            "empty registry: reference model registered as version %s (champion)",
            registered.version,
        )

    # --- verified local copies --------------------------------------------------------------
    def fetch(self, reference: str) -> tuple[RegisteredVersion, Path]:
        """Resolve, download once into the cache, and verify a version before use.

        Raises:
            RegistryError: unknown version or alias.
            ModelError: the files do not match the sha256 registered with the version, or are
                malformed. The cached copy is removed so a fixed version can be fetched again.
        """
        with self.using(reference) as fetched:
            return fetched

    @contextlib.contextmanager
    def using(self, reference: str) -> Iterator[tuple[RegisteredVersion, Path]]:
        """:meth:`fetch`, the copy kept from a prune until the block ends (while it loads)."""
        found = self.resolve(reference)
        with self.copies.locked():
            with self.answering():
                model_dir = self._fetched(found)
            yield found, model_dir

    def _fetched(self, found: RegisteredVersion) -> Path:
        target = self.copies.target(found.version)
        had_copy = (target / "model" / "model.onnx").is_file()
        if not had_copy:
            self._download(found, target)
        try:
            model_dir = self.copies.verify(found.version, found.sha256)
        except ModelError as exc:
            if not had_copy:
                raise  # the registry's own files are wrong
            # This host's copy was damaged (and is removed): a sound one is fetched once more.
            log.warning("%s; fetching version %s again", exc, found.version)
            self._download(found, target)
            model_dir = self.copies.verify(found.version, found.sha256)
        self.copies.remember_version(found)
        return model_dir

    def _download(self, found: RegisteredVersion, target: Path) -> None:
        """Download beside the cache, then move in whole: processes fetching the same version
        at once (a worker's pool processes on a reload) each read either nothing or a complete
        copy, never another's half-written file."""
        import mlflow.artifacts
        from mlflow.exceptions import MlflowException

        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            download = Path(tempfile.mkdtemp(prefix=f".{found.version}-", dir=target.parent))
            try:
                # The registry's own URI: an MLflow server's `mlflow-artifacts:` sources resolve
                # against it, not against MLflow's process-wide default (a local SQLite file).
                mlflow.artifacts.download_artifacts(
                    artifact_uri=found.source,
                    dst_path=str(download),
                    tracking_uri=self.uri,
                    registry_uri=self.uri,
                )
                try:
                    download.rename(target)
                except OSError:  # a copy is there: another process's, or an interrupted one
                    if not (target / "model" / "model.onnx").is_file():
                        shutil.rmtree(target)
                        download.rename(target)
            finally:
                shutil.rmtree(download, ignore_errors=True)
        except (OSError, MlflowException) as exc:  # this host's disk, not the registry
            if is_store_failure(exc):
                raise
            raise RegistryError(copy_refusal(found.version, target.parent, exc)) from None

    @_store_call
    def prune_cache(self, keep_newest: int, *, dry_run: bool = False) -> tuple[Pruned, set[str]]:
        """Remove this host's copies of versions no alias names, beyond the ``keep_newest``
        highest others; the versions kept for their aliases are returned with what was done.

        The aliases are read from the registry (a registry that does not answer raises
        :class:`RegistryUnavailable`: what it names is not known) and as this host last read
        them: processes that have not reloaded since an alias moved may still load those.
        """
        named = set(self.copies.last_read_aliases().values()) | set(self.aliases().values())
        return self.copies.prune(named, keep_newest, dry_run=dry_run), named


def open_registry(settings: Any) -> ModelRegistry:
    """The registry the settings name (the embedded SQLite one by default)."""
    if not settings.registry_uri:
        (settings.data_dir / "mlflow").mkdir(parents=True, exist_ok=True)
    return ModelRegistry(
        settings.resolved_registry_uri,
        name=settings.model_name,
        cache_dir=cache_dir(settings),
        artifact_location=settings.resolved_registry_artifacts,
    )


def serving_model_dir(settings: Any, *, bootstrap: bool = False, fall_back: bool = False) -> Path:
    """The model folder to serve: ``model_dir``, or the verified copy of the registry alias.

    With ``bootstrap``, an empty registry first receives ``model_dir`` as its champion; with
    ``fall_back``, a registry that does not answer leaves the copy of what the alias named
    when this host last read it (:func:`last_known_copy`).
    """
    if settings.model_source != "registry":
        return Path(settings.model_dir)
    try:
        registry = open_registry(settings)
        if bootstrap:
            registry.bootstrap(Path(settings.model_dir))
        found, model_dir = registry.fetch(settings.model_alias)
    except RegistryUnavailable as outage:
        if not fall_back:
            raise
        found, model_dir = last_known_copy(settings, settings.model_alias, outage)
        log.warning(
            "%s; using the copy of version %s, which %r named when this host last read the "
            "registry",
            outage,
            found.version,
            settings.model_alias,
        )
        return model_dir
    said = f"serving {settings.model_name} version {found.version} ({settings.model_alias})"
    log.log(logging.INFO if bootstrap else logging.DEBUG, said)  # health checks ask too
    return model_dir
