"""Pruning a host's copies of registry versions (a real embedded store).

Before: every version a host fetched stayed in its cache for ever (1.1 MB each for the
reference model), and a download cut short by a killed process left its folder behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from inference_worker.cli.main import main
from inference_worker.serving.registry import CHALLENGER, CHAMPION, ModelRegistry
from inference_worker.settings import load_settings
from tests.helpers import embedded_registry


@pytest.fixture
def registry(tmp_path: Path, model_dir: Path) -> ModelRegistry:
    """Six versions of the reference model, each fetched to this host; champion 3."""
    registry = embedded_registry(tmp_path)
    for _ in range(6):
        registry.register(model_dir)
    registry.set_alias(CHAMPION, "3")
    for version in range(1, 7):
        registry.fetch(str(version))
    return registry


def cached(registry: ModelRegistry) -> list[str]:
    return sorted(p.name for p in registry.copies.root.iterdir() if p.is_dir())


def test_copies_no_alias_names_go_beyond_the_newest_kept(registry):
    registry.set_alias(CHALLENGER, "1")
    registry.aliases()  # this host reads champion 3, challenger 1
    registry.set_alias(CHAMPION, "4")  # moved since: processes not yet reloaded still load 3
    leftover = registry.copies.root / ".7-interrupted"
    (leftover / "model").mkdir(parents=True)
    (leftover / "model" / "model.onnx").write_bytes(b"half")
    (registry.copies.root / ".pruned-2-killed" / "model").mkdir(parents=True)  # a prune's
    elsewhere = registry.copies.root / "9"  # another registry's version 9: its aliases unknown
    (elsewhere / "model").mkdir(parents=True)
    (elsewhere / "version.json").write_text(json.dumps({"registry": "sqlite:////other.db"}))

    pruned, named = registry.prune_cache(keep_newest=1)

    assert named == {"1", "3", "4"}
    assert [c.name for c in pruned.removed] == [".7-interrupted", ".pruned-2-killed", "2", "5"]
    assert [c.name for c in pruned.kept] == ["1", "3", "4", "6", "9"]
    assert cached(registry) == ["1", "3", "4", "6", "9"]
    assert all(c.size_bytes > 1_000_000 for c in pruned.kept if c.name != "9")
    found, model_dir = registry.fetch("2")  # a pruned version is fetched again when asked for
    assert found.version == "2" and (model_dir / "model.onnx").is_file()


def test_a_dry_run_removes_nothing(registry):
    before = cached(registry)
    pruned, _ = registry.prune_cache(keep_newest=0, dry_run=True)
    assert sorted(c.name for c in pruned.removed) == ["1", "2", "4", "5", "6"]
    assert cached(registry) == before


def test_a_prune_waits_for_a_copy_being_fetched_or_loaded(registry):
    """A copy is not removed under a process downloading, verifying or loading it (a job
    naming version 5 while an operator prunes)."""
    done = threading.Event()

    def prune() -> None:
        registry.prune_cache(keep_newest=0)
        done.set()

    with registry.using("5") as (found, model_dir):
        pruning = threading.Thread(target=prune)
        pruning.start()
        assert not done.wait(0.5)
        assert found.version == "5" and (model_dir / "model.onnx").is_file()
    pruning.join(timeout=30)
    assert done.is_set() and cached(registry) == ["3"]


def test_the_command_prints_what_it_removed_and_kept(tmp_path, model_dir, monkeypatch, capsys):
    monkeypatch.setenv("HEIMDALL_MODEL_SOURCE", "registry")
    monkeypatch.setenv("HEIMDALL_DATA_DIR", str(tmp_path / "var"))
    main(["models", "register", str(model_dir), "--alias", CHAMPION])
    main(["models", "register", str(model_dir)])
    main(["models", "verify", "2"])
    main(["models", "verify", CHAMPION])
    capsys.readouterr()
    main(["models", "prune-cache", "--keep", "0", "--dry-run"])
    assert capsys.readouterr().out == (
        "would remove version 2: 1.1 MB\n"
        "would free 1.1 MB; kept 1 copy (1.1 MB): versions 1 (an alias names it)\n"
    )
    main(["models", "prune-cache", "--keep", "0"])
    assert capsys.readouterr().out.startswith("removed version 2: 1.1 MB\nfreed 1.1 MB")
    settings = load_settings()
    root = settings.data_dir / "model-cache" / settings.model_name
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["1"]


def test_nothing_is_removed_while_the_registry_does_not_answer(tmp_path, model_dir):
    """What the aliases name is not known then: the command says so and keeps every copy."""
    env = {
        **os.environ,
        "HEIMDALL_MODEL_SOURCE": "registry",
        "HEIMDALL_DATA_DIR": str(tmp_path / "var"),
    }

    def cli(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "inference_worker.cli", "models", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)

    assert cli("register", str(model_dir), "--alias", CHAMPION).returncode == 0
    assert cli("register", str(model_dir)).returncode == 0
    assert cli("verify", "2").returncode == 0
    database = tmp_path / "var" / "mlflow" / "mlflow.db"
    database.rename(database.with_suffix(".away"))
    database.mkdir()  # a folder where the store's file should be: the store cannot open
    refused = cli("prune-cache", "--keep", "0")
    assert refused.returncode == 2
    assert "does not answer" in refused.stderr and refused.stdout == ""
    root = tmp_path / "var" / "model-cache" / "heimdall-localization"
    assert (root / "2" / "model" / "model.onnx").is_file()


def test_a_prune_killed_midway_leaves_no_half_copy(registry, monkeypatch):
    """A copy deleted file by file and stopped midway (its model.json gone, model.onnx still
    there) was refused by the next fetch, failing that job; it is moved aside whole first."""

    def killed(path, ignore_errors=False):
        (Path(path) / "model" / "model.json").unlink()
        raise SystemExit("killed")

    monkeypatch.setattr("inference_worker.serving.local_copies.shutil.rmtree", killed)
    with pytest.raises(SystemExit):
        registry.prune_cache(keep_newest=4)  # 1 and 2 go; killed during the first
    monkeypatch.undo()
    found, model_dir = registry.fetch("1")  # fetched again whole, not refused
    assert found.version == "1" and (model_dir / "model.json").is_file()
    pruned, _ = registry.prune_cache(keep_newest=5)
    assert [c.name for c in pruned.removed if c.name.startswith(".pruned-1-")]
