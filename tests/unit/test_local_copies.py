"""What a host keeps of the registry to serve while it does not answer (a real embedded store).

Before: a worker process that started while the registry did not answer (a pool process
replacing one that died, a worker restarted during the registry's maintenance) had no model and
held its jobs until the registry came back, though a verified copy of the champion lay on disk.
"""

from __future__ import annotations

import contextlib
import errno
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from inference_worker.core.contract import ModelError
from inference_worker.serving.local_copies import LocalCopies, NotKnownHere
from inference_worker.serving.registry import (
    CHALLENGER,
    CHAMPION,
    ModelRegistry,
    RegistryError,
    RegistryUnavailable,
    last_known_copy,
    serving_model_dir,
)
from inference_worker.settings import load_settings
from tests.helpers import embedded_registry


@pytest.fixture
def registry(tmp_path: Path, model_dir: Path) -> ModelRegistry:
    registry = embedded_registry(tmp_path)
    registry.bootstrap(model_dir)
    return registry


def test_a_fetched_version_is_known_here_by_its_number_and_its_alias(registry):
    found, model_dir = registry.fetch(CHAMPION)
    for reference in (CHAMPION, found.version):
        known, known_dir = registry.copies.last_known(reference)
        assert known_dir == model_dir
        assert (known.version, known.sha256, known.model_version) == (
            found.version,
            found.sha256,
            found.model_version,
        )


def test_an_alias_is_known_as_the_registry_last_named_it(registry, centroid_model_dir):
    registry.fetch(CHAMPION)
    second = registry.register(centroid_model_dir)
    registry.set_alias(CHALLENGER, second.version)
    registry.fetch(CHALLENGER)
    assert registry.copies.last_known(CHALLENGER)[0].version == second.version
    registry.remove_alias(CHALLENGER)
    registry.aliases()  # the next reading (a reload's) finds it gone: so does this host
    with pytest.raises(NotKnownHere, match="'challenger'"):
        registry.copies.last_known(CHALLENGER)
    assert registry.copies.last_known(second.version)[0].version == second.version


def test_a_version_is_read_with_its_aliases_in_one_call(registry, centroid_model_dir, monkeypatch):
    """Every health check resolves the served alias: the registered model (every alias and
    version) was read a second time to name the version's aliases, which it comes with."""
    registry.set_alias(CHALLENGER, "1")
    second = registry.register(centroid_model_dir)
    whole_reads = []
    read_whole = registry.client.get_registered_model

    def counted(*args):
        whole_reads.append(args)
        return read_whole(*args)

    monkeypatch.setattr(registry.client, "get_registered_model", counted)
    found, _ = registry.fetch(CHAMPION)
    assert (found.version, found.aliases, whole_reads) == ("1", (CHALLENGER, CHAMPION), [])
    assert registry.copies.last_read_aliases() == {CHALLENGER: "1", CHAMPION: "1"}
    registry.client.set_registered_model_alias(registry.name, CHAMPION, second.version)
    registry.client.delete_registered_model_alias(registry.name, CHALLENGER)
    whole_reads.clear()  # (MLflow's own, moving the aliases)
    assert registry.resolve(CHAMPION).version == second.version
    # challenger, removed since, is kept as last read until a reading shows it gone
    assert registry.copies.last_read_aliases() == {CHALLENGER: "1", CHAMPION: second.version}
    assert whole_reads == []
    assert registry.resolve("1").aliases == ()  # a version no alias names: all are read
    assert registry.copies.last_read_aliases() == {CHAMPION: second.version}
    assert len(whole_reads) == 1


def test_a_store_that_does_not_list_a_version_s_aliases_is_asked_for_them(registry, monkeypatch):
    """What this host keeps of the aliases (to serve through an outage) is not forgotten."""
    for read in ("get_model_version_by_alias", "get_model_version"):
        monkeypatch.setattr(registry.client, read, without_aliases(getattr(registry.client, read)))
    assert registry.resolve(CHAMPION).aliases == (CHAMPION,)
    assert registry.copies.last_read_aliases() == {CHAMPION: "1"}
    assert registry.resolve("1").aliases == (CHAMPION,)
    assert registry.copies.last_read_aliases() == {CHAMPION: "1"}


def without_aliases(read):
    def read_without(*args):
        found = read(*args)
        found.aliases = []
        return found

    return read_without


def test_nothing_is_known_of_a_version_never_fetched_or_of_another_registry(registry):
    registry.aliases()
    with pytest.raises(NotKnownHere, match="version 1"):
        registry.copies.last_known(CHAMPION)  # named, never fetched here
    registry.fetch(CHAMPION)
    other = LocalCopies(registry.copies.root, "sqlite:////elsewhere/mlflow.db")
    with pytest.raises(NotKnownHere):
        other.last_known(CHAMPION)
    with pytest.raises(NotKnownHere):
        other.last_known("1")
    assert other.held("1") is None


def test_a_copy_is_held_here_only_when_whole_and_verified(registry):
    assert registry.copies.held("1") is None  # never fetched
    _, model_dir = registry.fetch(CHAMPION)
    size = registry.copies.held("1")
    assert size is not None and size > (model_dir / "model.onnx").stat().st_size
    (model_dir / "model.onnx").unlink()  # a copy damaged on the host
    assert registry.copies.held("1") is None


def test_a_copy_changed_on_disk_is_refused_and_removed(registry):
    _, model_dir = registry.fetch(CHAMPION)
    data = bytearray((model_dir / "model.onnx").read_bytes())
    data[100] ^= 0xFF
    (model_dir / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        registry.copies.last_known(CHAMPION)
    assert not model_dir.exists()
    with pytest.raises(NotKnownHere):
        registry.copies.last_known(CHAMPION)


def test_a_copy_whose_metadata_names_another_file_is_refused(registry):
    _, model_dir = registry.fetch(CHAMPION)
    described = json.loads((model_dir / "model.json").read_text())
    described["sha256"] = "0" * 64
    (model_dir / "model.json").write_text(json.dumps(described))
    with pytest.raises(ModelError, match="model.json says 0000"):
        registry.copies.last_known(CHAMPION)
    assert not model_dir.exists()


def test_a_registry_that_does_not_answer_leaves_the_copy_only_where_asked(tmp_path, model_dir):
    settings = load_settings(
        model_source="registry", data_dir=tmp_path / "var", model_dir=model_dir
    )
    served = serving_model_dir(settings, bootstrap=True)
    outage = RegistryUnavailable("the model registry at sqlite:///... does not answer")
    assert last_known_copy(settings, CHAMPION, outage)[1] == served
    with pytest.raises(RegistryUnavailable) as raised:
        last_known_copy(settings, CHALLENGER, outage)
    assert raised.value is outage
    # A process of its own: the registry's file is gone and a folder stands in its place.
    database = tmp_path / "var" / "mlflow" / "mlflow.db"
    database.rename(database.with_suffix(".away"))
    database.mkdir()
    script = (
        "import sys\n"
        "from inference_worker.settings import load_settings\n"
        "from inference_worker.serving.registry import RegistryUnavailable, serving_model_dir\n"
        f"settings = load_settings(model_source='registry', data_dir={str(tmp_path / 'var')!r})\n"
        "print(serving_model_dir(settings, fall_back=True))\n"
        "try:\n"
        "    serving_model_dir(settings)\n"
        "except RegistryUnavailable:\n"
        "    print('unavailable')\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == [str(served), "unavailable"]
    assert "named when this host last read the registry" in ran.stderr


def test_a_folder_that_cannot_be_written_loses_only_the_serving_through_an_outage(registry, caplog):
    """Keeping the records is not the command's work: a cache that refuses them is a warning."""
    kept = registry.copies.root / "aliases.json"
    kept.unlink(missing_ok=True)
    kept.mkdir(parents=True)  # a folder where the file should be replaced
    assert registry.aliases() == {CHAMPION: "1"}
    assert "cannot keep" in caplog.text
    with pytest.raises(NotKnownHere):
        registry.copies.last_known(CHAMPION)
    registry.fetch("1")
    record = registry.copies.target("1") / "version.json"
    record.unlink()
    record.mkdir()
    found, model_dir = registry.fetch("1")  # served; only its record is not kept
    assert found.version == "1" and (model_dir / "model.onnx").is_file()
    with pytest.raises(NotKnownHere):
        registry.copies.last_known("1")


def test_a_copy_damaged_on_this_host_is_fetched_again_while_the_registry_answers(registry, caplog):
    """The fetch refused it (and removed it): the job or reload that met it failed once."""
    _, model_dir = registry.fetch(CHAMPION)
    sound = (model_dir / "model.onnx").read_bytes()
    (model_dir / "model.onnx").write_bytes(sound[:1000])
    _, again = registry.fetch(CHAMPION)
    assert again == model_dir and (again / "model.onnx").read_bytes() == sound
    assert "fetching version 1 again" in caplog.text


def test_a_copy_this_host_cannot_keep_is_refused_in_one_line(registry, monkeypatch):
    """A full disk raised MLflow's own multi-line error through every caller (a traceback from
    the command line; a job naming the version failed with an internal error)."""
    import mlflow.artifacts

    def full(**_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", full)
    with pytest.raises(RegistryError) as refused:
        registry.fetch(CHAMPION)
    said = str(refused.value)
    assert said.startswith("version 1 cannot be kept in ") and "\n" not in said
    assert "No space left on device" in said and "models prune-cache" in said
    assert not [p for p in registry.copies.root.iterdir() if p.is_dir()]  # nothing half kept


def test_two_processes_remembering_aliases_at_once_keep_both(tmp_path, monkeypatch):
    """Each merge of one version's aliases reads, merges and writes ``aliases.json``: two at
    once both read the file before either wrote, and the second write lost the first's alias
    (a process starting in a later outage then served what the lost alias named before)."""
    copies = LocalCopies(tmp_path / "heimdall", "sqlite:///registry.db")
    copies.remember_aliases({"champion": "1"})
    both_read = threading.Barrier(2, timeout=1.0)
    read = LocalCopies.last_read_aliases

    def slow_read(self: LocalCopies) -> dict[str, str]:
        known = read(self)
        with contextlib.suppress(threading.BrokenBarrierError):
            both_read.wait()  # under the lock only one reader gets here before the other writes
        return known

    monkeypatch.setattr(LocalCopies, "last_read_aliases", slow_read)
    merges = [
        threading.Thread(target=copies.remember_aliases_of, args=("2", ["champion"])),
        threading.Thread(target=copies.remember_aliases_of, args=("3", ["challenger"])),
    ]
    for merge in merges:
        merge.start()
    for merge in merges:
        merge.join()
    monkeypatch.undo()
    assert copies.last_read_aliases() == {"champion": "2", "challenger": "3"}
