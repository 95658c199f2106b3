"""A worker or shim started while a store does not answer (restarting, failing over, silent)
waits for it up to ``HEIMDALL_START_WAIT_S``, saying which and why, then starts; past that it
exits with status 2 naming the store, as it did at once before. Under a supervisor that starts
it again, exiting at once left the service down for as long as some store was silent at each
try: in a soak of overlapping faults (`tools/chaos_soak.py --overlap --every 3 8 --seed 13`)
the restarted worker and shim failed 11 and 14 starts in a row, the shim's clients refused 271
times meanwhile. A store that answers with a refusal (a password, a database it does not have)
is not waited for: the start ends at once, saying what to change.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from api_shim.app import create_app
from inference_worker.cli.processes import wait_until
from inference_worker.storage.database import JobStore
from tests.integration.helpers import (
    free_port,
    redis_through,
    refusing_settings,
    submit_npy,
    wait_final_row,
    worker_env,
)


@pytest.mark.timeout(180, method="thread")
def test_a_worker_started_while_redis_is_silent_waits_for_it_then_serves(
    own_queue_factory, redis_relay, settings, engine, capture, tmp_path
):
    local, _, start_worker = own_queue_factory(
        redis_url=redis_through(settings, redis_relay), start_wait_s=90.0
    )
    log = tmp_path / "waiting.log"
    redis_relay.speaking.clear()
    try:
        with start_worker("waiting") as worker:
            wait_until("the worker to say it waits", lambda: "waiting up to" in log.read_text(), 60)
            assert worker.poll() is None
            assert "Redis at redis://127.0.0.1:" in log.read_text()
            redis_relay.speaking.set()
            wait_until("the worker to start", lambda: "Redis answers now" in log.read_text(), 60)
            app = create_app(local)
            try:
                submitted = submit_npy(app.test_client(), capture)
                assert submitted.status_code == 202, submitted.get_json()
                row = wait_final_row(JobStore(engine), submitted.get_json()["job_id"])
                assert row["status"] == "succeeded", row
            finally:
                app.extensions["heimdall"].jobs.engine.dispose()
    finally:
        redis_relay.speaking.set()


def shim_started(settings, **env: str) -> subprocess.CompletedProcess[str]:
    """``heimdall-inference api`` started with ``env`` over the session's settings, to its end."""
    return subprocess.run(
        [sys.executable, "-m", "inference_worker.cli", "api", "--port", str(free_port())],
        env={**worker_env(settings), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("wait_s", [0.0, 2.0])
def test_a_shim_whose_database_does_not_answer_exits_naming_it_once_its_wait_is_over(
    settings, refusing_port, wait_s
):
    done = shim_started(
        settings,
        HEIMDALL_DATABASE_URL=f"postgresql+psycopg2://postgres@127.0.0.1:{refusing_port}/x",
        HEIMDALL_START_WAIT_S=str(wait_s),
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    named = f"PostgreSQL at postgresql+psycopg2://postgres@127.0.0.1:{refusing_port}/x is not"
    assert f"error: {named} reachable: " in done.stderr
    lines = done.stderr.splitlines()
    if wait_s:
        assert lines[0].startswith(f"waiting up to 2 s more: {named} reachable"), lines[0]
        assert "(waited 2 s: HEIMDALL_START_WAIT_S)" in done.stderr
    else:
        assert "waiting" not in done.stderr


@pytest.mark.parametrize(
    ("setting", "field"),
    [
        ("HEIMDALL_BROKER_URL", "broker_url"),
        ("HEIMDALL_REDIS_URL", "redis_url"),
        ("HEIMDALL_DATABASE_URL", "database_url"),
    ],
)
def test_a_store_that_refuses_the_shim_ends_its_start_at_once_saying_what_to_change(
    settings, setting, field
):
    refused = getattr(refusing_settings(settings), field)
    done = shim_started(settings, **{setting: refused, "HEIMDALL_START_WAIT_S": "60"})
    assert done.returncode == 2, done.stderr
    assert "waiting" not in done.stderr and "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: ") and " refused: " in line, line
    assert line.endswith(f"{setting})"), line
