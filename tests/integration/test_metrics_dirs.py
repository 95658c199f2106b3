"""A worker and an api given the same ``PROMETHEUS_MULTIPROC_DIR`` each keep their samples in a
folder of their own inside it, leave everything else there alone, and remove their folder when
they stop (starting the api emptied the whole folder before, the worker's samples included)."""

from __future__ import annotations

import urllib.request

from inference_worker.cli.processes import cli_process, wait_until
from tests.integration.helpers import free_port, worker_env
from tests.integration.shim_processes import shim_answers


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status == 200
    except OSError:
        return False


def test_a_worker_and_an_api_share_a_metrics_folder_without_wiping_it(
    settings, engine, queue_cleanup, tmp_path
):
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (metrics / "notes.txt").write_text("not the services'")
    port, metrics_port = free_port(), free_port()
    env = {
        **worker_env(settings),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics),
        "HEIMDALL_API_PORT": str(port),
        "HEIMDALL_WORKER_METRICS_PORT": str(metrics_port),
    }
    with cli_process(["worker", "--concurrency", "1"], tmp_path / "worker.log", env) as worker:
        worker_metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        wait_until("the worker's metrics", lambda: answers(worker_metrics), 60, worker)
        with cli_process(["api", "--workers", "1"], tmp_path / "api.log", env) as api:
            wait_until("the shim", lambda: shim_answers(f"http://127.0.0.1:{port}"), 60, api)
            assert answers(f"http://127.0.0.1:{port}/metrics")
            folders = {p.name for p in metrics.iterdir() if p.is_dir()}
            assert folders == {
                f"heimdall-metrics-worker-{worker.pid}",
                f"heimdall-metrics-api-{api.pid}",
            }
            assert answers(worker_metrics)
        assert {p.name for p in metrics.iterdir() if p.is_dir()} == {
            f"heimdall-metrics-worker-{worker.pid}"
        }
    assert [p.name for p in metrics.iterdir()] == ["notes.txt"]
    assert (metrics / "notes.txt").read_text() == "not the services'"
