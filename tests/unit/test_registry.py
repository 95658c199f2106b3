"""The model registry on a real embedded MLflow store: register, aliases, verified copies."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from inference_worker.cli.main import main
from inference_worker.core.contract import ModelError, load_metadata
from inference_worker.serving.registry import (
    CHALLENGER,
    CHAMPION,
    ModelRegistry,
    RegistryError,
    serving_model_dir,
)
from inference_worker.settings import load_settings


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        name="heimdall-test",
        cache_dir=tmp_path / "cache",
        artifact_location=(tmp_path / "artifacts").as_uri(),
    )


def test_empty_registry_receives_the_reference_model_as_champion_once(registry, model_dir):
    registry.bootstrap(model_dir)
    registry.bootstrap(model_dir)
    versions = registry.versions()
    assert [v.version for v in versions] == ["1"] and versions[0].aliases == (CHAMPION,)
    assert registry.resolve(CHAMPION).model_version == load_metadata(model_dir).version


def test_a_second_version_can_be_challenger_then_champion(registry, model_dir, centroid_model_dir):
    registry.bootstrap(model_dir)
    second = registry.register(centroid_model_dir)
    registry.set_alias(CHALLENGER, second.version)
    assert registry.resolve(CHALLENGER).model_version.startswith("centroid-")
    registry.set_alias(CHAMPION, second.version)
    registry.remove_alias(CHALLENGER)
    assert registry.aliases() == {CHAMPION: second.version}


def test_fetch_verifies_and_downloads_once(registry, model_dir):
    registry.bootstrap(model_dir)
    found, local = registry.fetch(CHAMPION)
    assert (local / "model.onnx").read_bytes() == (model_dir / "model.onnx").read_bytes()
    stamp = (local / "model.onnx").stat().st_mtime_ns
    again, local_again = registry.fetch("1")
    assert local_again == local and (local / "model.onnx").stat().st_mtime_ns == stamp


def test_a_corrupted_version_is_refused_and_not_cached(registry, model_dir, tmp_path):
    registry.bootstrap(model_dir)
    stored = next((tmp_path / "artifacts").rglob("model.onnx"))
    data = bytearray(stored.read_bytes())
    data[100] ^= 0xFF
    stored.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        registry.fetch(CHAMPION)
    assert not any((tmp_path / "cache").rglob("model.onnx"))


def test_a_folder_that_does_not_match_its_metadata_cannot_be_registered(
    registry, model_dir, tmp_path
):
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="sha256"):
        registry.register(broken)


def test_unknown_versions_and_aliases_are_named(registry, model_dir):
    registry.bootstrap(model_dir)
    with pytest.raises(RegistryError, match="'nobody'"):
        registry.resolve("nobody")
    with pytest.raises(RegistryError, match="'7'"):
        registry.set_alias(CHALLENGER, "7")
    with pytest.raises(RegistryError):
        registry.remove_alias(CHALLENGER)


def test_registry_mode_serves_the_verified_copy_of_the_alias(tmp_path, model_dir):
    settings = load_settings(
        model_source="registry", data_dir=tmp_path / "var", model_dir=model_dir
    )
    local = serving_model_dir(settings, bootstrap=True)
    assert (
        local != model_dir
        and (local / "model.onnx").read_bytes() == (model_dir / "model.onnx").read_bytes()
    )
    assert serving_model_dir(load_settings(model_dir=model_dir)) == model_dir


def test_the_command_line_keeps_the_alias_the_workers_serve(
    tmp_path, model_dir, monkeypatch, capsys
):
    """`models demote champion` removed it (the HTTP endpoint refused): the next worker to start
    or reload found no version to serve."""
    monkeypatch.setenv("HEIMDALL_MODEL_SOURCE", "registry")
    monkeypatch.setenv("HEIMDALL_DATA_DIR", str(tmp_path / "var"))
    serving_model_dir(load_settings(), bootstrap=True)
    with pytest.raises(SystemExit) as exit_:
        main(["models", "demote", CHAMPION])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        "error: 'champion' is the alias the workers serve; move it instead "
        "(models promote VERSION --alias champion)\n"
    )
    assert serving_model_dir(load_settings()).is_dir()
