"""The model registry on a PostgreSQL database, and one whose store does not answer.

Before: a registry named as the README shows it (``postgresql://...``) was a traceback (SQLAlchemy
2.1 reads that form as psycopg 3); one whose database or MLflow server was down held every
command for 100 s to more than five minutes before a traceback; files of a database registry
went to ``./mlruns`` wherever the command ran. What the shim and the workers do through an
outage is in ``test_registry_outage.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from inference_worker.serving.registry import CHAMPION
from tests.integration.helpers import worker_env
from tests.integration.registry_helpers import COMMAND_TIMEOUT_S, registry_env, run_cli


def test_a_registry_on_postgresql_registers_promotes_and_verifies(
    settings, registry_database, centroid_model_dir, tmp_path
):
    url, _ = registry_database
    data_dir = tmp_path / "data"
    env = registry_env(data_dir, url)
    registered = run_cli(
        settings, tmp_path, "models", "register", str(centroid_model_dir), "--alias", "challenger",
        **env,
    )  # fmt: skip
    assert registered.returncode == 0, registered.stderr
    assert "registered" in registered.stdout and "challenger -> version 1" in registered.stdout
    promoted = run_cli(settings, tmp_path, "models", "promote", "1", "--alias", CHAMPION, **env)
    assert promoted.returncode == 0, promoted.stderr
    listed = run_cli(settings, tmp_path, "models", "list", "--json", **env)
    assert [v["aliases"] for v in json.loads(listed.stdout)] == [["challenger", CHAMPION]]
    assert json.loads(listed.stdout)[0]["copy_bytes"] is None  # nothing fetched on this host
    verified = run_cli(settings, tmp_path, "models", "verify", CHAMPION, **env)
    assert verified.returncode == 0 and "version 1 verified" in verified.stdout
    listed = run_cli(settings, tmp_path, "models", "list", "--json", **env)
    copy = data_dir / "model-cache" / settings.model_name / "1"
    held = sum(p.stat().st_size for p in copy.rglob("*") if p.is_file())
    assert json.loads(listed.stdout)[0]["copy_bytes"] == held > 0
    assert "copy here: " in run_cli(settings, tmp_path, "models", "list", **env).stdout
    # The files lie in the data folder, not in ./mlruns of wherever the command ran.
    assert not (tmp_path / "mlruns").exists()
    assert list((data_dir / "mlflow" / "artifacts").rglob("model.onnx"))


@pytest.mark.parametrize("store", ["postgresql", "mlflow server", "sqlite"])
def test_a_registry_that_does_not_answer_is_named_in_one_line(
    settings, store, refusing_port, tmp_path
):
    """MLflow retried a stopped database ten times (~100 s) and a stopped server for more than
    five minutes before a traceback; the worker's start waited as long. An embedded store's file
    that cannot be opened was retried as long as a database server."""
    uris = {
        "postgresql": f"postgresql://postgres@127.0.0.1:{refusing_port}/registry",
        "mlflow server": f"http://127.0.0.1:{refusing_port}",
        "sqlite": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    (tmp_path / "mlflow.db").mkdir()  # a folder where the embedded store's file should be
    env = registry_env(tmp_path / "data", uris[store])
    listed = run_cli(settings, tmp_path, "models", "list", **env)
    assert listed.returncode == 2
    assert listed.stderr.startswith("error: the model registry at ")
    reason = "unable to open database file" if store == "sqlite" else "Connection refused"
    assert "does not answer" in listed.stderr and reason in listed.stderr
    assert "Traceback" not in listed.stderr and len(listed.stderr.splitlines()) == 1
    started = run_cli(settings, tmp_path, "worker", "--concurrency", "1", **env)
    assert started.returncode == 2
    assert "cannot use the model (registry): the model registry at" in started.stderr


def test_processes_starting_together_on_a_new_postgresql_registry_take_turns(
    settings, registry_database, tmp_path
):
    """MLflow's migrations of a new store ran in each process at once: all but one failed with
    a duplicate key in PostgreSQL's catalogue."""
    url, _ = registry_database
    env = {**worker_env(settings), **registry_env(tmp_path / "data", url)}
    command = [sys.executable, "-m", "inference_worker.cli", "models", "list"]
    started = [
        subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]  # fmt: skip
    errors = [p.communicate(timeout=COMMAND_TIMEOUT_S)[1] for p in started]
    outcomes = [(p.returncode, err) for p, err in zip(started, errors, strict=True)]
    assert [code for code, _ in outcomes] == [0, 0, 0], [err[-400:] for _, err in outcomes]
