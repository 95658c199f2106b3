"""Each service process keeps its Prometheus samples in a folder of its own: a configured
``PROMETHEUS_MULTIPROC_DIR`` is the place for them, not a folder to empty, and folders of
processes that were killed are removed by the next service to start there."""

from __future__ import annotations

import os
import subprocess
import sys

from inference_worker.serving.observability import prepare_multiprocess_dir


def test_a_service_takes_a_folder_of_its_own_and_clears_only_dead_ones(tmp_path, monkeypatch):
    (tmp_path / "notes.txt").write_text("not the service's")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stale = tmp_path / f"heimdall-metrics-worker-{int(dead.stdout)}"
    live = tmp_path / f"heimdall-metrics-api-{os.getppid()}"
    other = tmp_path / "heimdall-metrics-notes"
    for folder in (stale, live, other):
        folder.mkdir()
        (folder / "counter_1.db").write_bytes(b"")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))

    path = prepare_multiprocess_dir("worker")

    assert path == tmp_path / f"heimdall-metrics-worker-{os.getpid()}" and path.is_dir()
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(path)
    assert (tmp_path / "notes.txt").read_text() == "not the service's"
    assert not stale.exists()  # its process is gone
    assert (live / "counter_1.db").exists() and (other / "counter_1.db").exists()


def test_a_process_executed_again_starts_beside_its_former_folder(tmp_path, monkeypatch):
    """Celery's worker executes itself again on SIGHUP (same pid) and the shim's master on
    SIGUSR2 (a new one, while the former serves on): each inherits the variable pointing at the
    former folder, and its own goes beside it, never inside."""
    former = tmp_path / "heimdall-metrics-api-1"  # the master that executed the new one
    former.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(former))

    path = prepare_multiprocess_dir("api")

    assert path == tmp_path / f"heimdall-metrics-api-{os.getpid()}"
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(path))  # as after Celery's restart
    (path / "counter_1.db").write_bytes(b"")
    assert prepare_multiprocess_dir("api") == path and not (path / "counter_1.db").exists()
