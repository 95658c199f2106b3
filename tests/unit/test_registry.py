"""The model registry on a real embedded MLflow store: register, aliases, verified copies."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from inference_worker.cli.main import main
from inference_worker.core.contract import ModelError, load_metadata
from inference_worker.serving.registry import (
    CHALLENGER,
    CHAMPION,
    ModelRegistry,
    RegistryError,
    open_registry,
    serving_model_dir,
)
from inference_worker.serving.registry_store import short_rest_reason
from inference_worker.settings import load_settings
from tests.helpers import edited_copy, embedded_registry


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return embedded_registry(tmp_path)


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


def test_a_model_no_worker_could_serve_cannot_be_registered(registry, model_dir, tmp_path):
    """Its metadata reads, but a domain receiver's latitude as text fails the warm-up: it was
    registered, and refused only when a reload asked the workers for it."""

    def edit(metadata):
        metadata["domain"]["receivers"][0]["lat"] = "45.0"

    with pytest.raises(ModelError, match="cannot locate a capture"):
        registry.register(edited_copy(model_dir, tmp_path / "broken", edit))
    assert registry.versions() == []


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


def test_the_served_version_is_said_as_a_process_starts_not_at_every_reading(
    tmp_path, model_dir, caplog
):
    """Health checks and model views read the alias too: 17 280 lines a day at 5-s checks."""
    settings = load_settings(
        model_source="registry", data_dir=tmp_path / "var", model_dir=model_dir
    )
    caplog.set_level("INFO", logger="inference_worker.serving.registry")
    serving_model_dir(settings, bootstrap=True)
    assert caplog.records[-1].getMessage() == "serving heimdall-localization version 1 (champion)"
    caplog.clear()
    serving_model_dir(settings)
    assert caplog.records == []


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


@pytest.mark.parametrize("alias", ["bad alias!", "a.b", "V7", "latest", "42"])
def test_an_alias_the_registry_cannot_hold_is_refused_in_one_line(
    alias, tmp_path, model_dir, monkeypatch, capsys
):
    """MLflow's refusal was a traceback."""
    monkeypatch.setenv("HEIMDALL_MODEL_SOURCE", "registry")
    monkeypatch.setenv("HEIMDALL_DATA_DIR", str(tmp_path / "var"))
    serving_model_dir(load_settings(), bootstrap=True)
    with pytest.raises(SystemExit) as exit_:
        main(["models", "promote", "1", "--alias", alias])
    assert exit_.value.code == 2
    said = capsys.readouterr().err
    assert said.startswith(f"error: alias {alias!r}") and said.count("\n") == 1, said
    with pytest.raises(SystemExit):  # refused before the version is registered
        main(["models", "register", str(model_dir), "--alias", alias])
    assert [v.version for v in open_registry(load_settings()).versions()] == ["1"]


def run_together(count: int, script: str, env: dict[str, str]) -> list[subprocess.CompletedProcess]:
    """``count`` Python processes started at once, each running ``script``."""
    started = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    done = []
    for process in started:
        out, err = process.communicate(timeout=120)
        done.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return done


SERVE = """
from inference_worker.serving.registry import serving_model_dir
from inference_worker.settings import load_settings
print(serving_model_dir(load_settings(), bootstrap=True))
"""


def test_processes_starting_together_on_a_new_registry_all_serve_one_version(tmp_path):
    """MLflow sets a new store's tables up with no lock of its own: of three processes starting
    together (a worker and two shim processes, say), all failed ("table _alembic_tmp_...
    already exists", "Online migration expected to match one row")."""
    env = {"HEIMDALL_MODEL_SOURCE": "registry", "HEIMDALL_DATA_DIR": str(tmp_path / "var")}
    done = run_together(3, SERVE, env)
    assert [d.returncode for d in done] == [0, 0, 0], [d.stderr[-500:] for d in done]
    assert len({d.stdout for d in done}) == 1
    registry = open_registry(load_settings(data_dir=tmp_path / "var"))
    assert [(v.version, v.aliases) for v in registry.versions()] == [("1", (CHAMPION,))]


def test_processes_fetching_a_version_together_each_get_a_verified_copy(tmp_path, model_dir):
    """A process that found another's half-downloaded model.onnx refused the version (its
    sha256 did not match) and removed the copy under the other's feet."""
    settings = load_settings(model_source="registry", data_dir=tmp_path / "var")
    open_registry(settings).bootstrap(model_dir)
    fetch = (
        "from inference_worker.serving.registry import open_registry\n"
        "from inference_worker.settings import load_settings\n"
        "print(open_registry(load_settings()).fetch('champion')[1])\n"
    )
    env = {"HEIMDALL_MODEL_SOURCE": "registry", "HEIMDALL_DATA_DIR": str(tmp_path / "var")}
    done = run_together(4, fetch, env)
    assert [d.returncode for d in done] == [0] * 4, [d.stderr[-500:] for d in done]
    local = Path(done[0].stdout.strip())
    assert (local / "model.onnx").read_bytes() == (model_dir / "model.onnx").read_bytes()
    kept = sorted(p.name for p in local.parent.parent.iterdir())
    assert kept == [".aliases.lock", ".lock", "1", "aliases.json"]  # no download left behind


@pytest.mark.parametrize(
    ("said", "shown"),
    [
        (
            "API request to http://r:5000/api/2.0/mlflow/registered-models/search failed with "
            "exception HTTPConnectionPool(host='r', port=5000): Max retries exceeded with url: "
            "/api/2.0/mlflow/registered-models/search?filter=x&max_results=1 (Caused by "
            "ReadTimeoutError(\"HTTPConnectionPool(host='r', port=5000): Read timed out. "
            '(read timeout=3)"))',
            "API request to http://r:5000/api/2.0/mlflow/registered-models/search failed: "
            "Read timed out. (read timeout=3)",
        ),
        (
            "API request to http://r:5000/api/2.0/mlflow/model-versions/get failed with "
            "exception HTTPConnectionPool(host='r', port=5000): Max retries exceeded with url: "
            "/api/2.0/mlflow/model-versions/get?name=m (Caused by NewConnectionError('<urllib3."
            "connection.HTTPConnection object at 0x7f3a>: Failed to establish a new connection: "
            "[Errno 111] Connection refused'))",
            "API request to http://r:5000/api/2.0/mlflow/model-versions/get failed: "
            "Failed to establish a new connection: [Errno 111] Connection refused",
        ),
        ("(psycopg2.OperationalError) connection refused", None),
        ("API request to http://r/x failed with error code 502 != 200", None),
    ],
)
def test_a_failed_rest_request_is_said_in_few_words(said: str, shown: str | None) -> None:
    assert short_rest_reason(said) == (shown or said)


def test_a_child_process_chooses_its_own_mlflow_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """What this process chose for MLflow is not passed on as if an operator had set it; what
    the operator set is."""
    from inference_worker.serving import registry_store

    monkeypatch.setattr(registry_store, "_APPLIED", {})
    for variable in registry_store.MLFLOW_DEFAULTS:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5")  # the operator's
    registry_store.apply_mlflow_defaults()
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "10"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "5"
    child = registry_store.without_applied_defaults(dict(os.environ))
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in child
    assert child["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "5"
    monkeypatch.setattr(registry_store, "_APPLIED", {})
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT")
    registry_store.apply_mlflow_defaults(quick=True)  # the check's
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "3"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "5"
