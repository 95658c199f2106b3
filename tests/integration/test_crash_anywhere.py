"""A submitting process killed at any step of accepting a capture leaves no job behind: every job a
client heard 202 for, or retried with its job id, reaches a final state with one result at most.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from api_shim.app import create_app
from inference_worker.cli.processes import cli_process, wait_until
from inference_worker.storage.database import JobStore
from inference_worker.storage.schema import inference_logs, jobs
from tests.helpers import capture_query, npy_bytes
from tests.integration.crashing_submit import KILLED, STEPS, capture_for
from tests.integration.helpers import (
    free_port,
    job_row,
    produce,
    submit_npy,
    wait_final_row,
    worker_env,
)
from tests.integration.shim_processes import child_pids, shim_answers

REPO = Path(__file__).resolve().parents[2]
CASES = [
    (via, step)
    for via in ("shim", "producer")
    for step in STEPS
    if (via, step)
    != (
        "producer",
        "after_row",  # the producer writes no row
    )
]
NEVER_PUBLISHED = {("producer", "after_capture")}
"""A producer killed before publishing leaves no job at all: its caller never got an id back."""


def results_per_job(engine, job_ids: list[str]) -> dict[str, int]:
    with engine.connect() as connection:
        return dict(
            connection.execute(
                sa.select(inference_logs.c.job_id, sa.func.count())
                .where(inference_logs.c.job_id.in_(job_ids))
                .group_by(inference_logs.c.job_id)
            ).all()
        )


def test_a_submission_killed_at_any_step_ends_final_with_one_result_at_most(
    own_queue_factory, engine
):
    # Given a worker whose relay looks for unconfirmed submissions every half second
    local, store, start_worker = own_queue_factory(outbox_grace_s=1.0, relay_interval_s=0.5)
    client = create_app(local).test_client()
    job_store = JobStore(engine)
    env = worker_env(local)
    planted: list[tuple[str, str, bool, str]] = []
    with start_worker("crash") as worker:
        wait_until("the worker", lambda: bool(store.workers()), 60, worker)
        # When a shim or a producer is killed at each step, and its client retries or not
        for index, (via, step) in enumerate(CASES):
            for retried in (False, True):
                job_id = f"crash-{via}-{step}-{'retried' if retried else 'alone'}"
                seed = 1000 + 2 * index + retried
                killed = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "tests.integration.crashing_submit",
                        via,
                        step,
                        job_id,
                        str(seed),
                    ],
                    env=env,
                    cwd=REPO,
                    timeout=120,
                    capture_output=True,
                    text=True,
                )
                assert killed.returncode == KILLED, killed.stderr[-2000:]
                if retried:  # the client heard nothing and submits again under the same id
                    capture = capture_for(seed)
                    if via == "shim":
                        answer = submit_npy(client, capture, job_id=job_id)
                        assert answer.status_code == 202, answer.get_json()
                    else:
                        assert produce(local, capture, job_id=job_id) == job_id
                planted.append((via, step, retried, job_id))

        # Then every job that can exist ends final
        outcomes = {}
        for via, step, retried, job_id in planted:
            if (via, step) in NEVER_PUBLISHED and not retried:
                continue
            row = job_store.get(job_id)
            if row is None and (via, step) == ("producer", "during_publish") and not retried:
                continue  # the broker may have dropped a message whose confirm never left
            outcomes[job_id] = wait_final_row(job_store, job_id)

    counts = results_per_job(engine, [job_id for *_, job_id in planted])
    print()
    for via, step, retried, job_id in planted:
        row = outcomes.get(job_id) or job_store.get(job_id)
        status = row["status"] if row else "no job"
        detail = (row["error"] or "") if row else ""
        print(
            f"  {via:<8} {step:<15} {'retried' if retried else 'alone':<8} {status:<9} "
            f"results {counts.get(job_id, 0)}  {detail[:70]}"
        )
    for via, step, retried, job_id in planted:
        row = job_store.get(job_id)
        if (via, step) in NEVER_PUBLISHED and not retried:
            assert row is None  # visibly not accepted
            continue
        if row is None:
            continue  # the producer's lost in-flight message, above
        assert row["status"] in ("succeeded", "failed"), (job_id, dict(row))
        assert counts.get(job_id, 0) == (1 if row["status"] == "succeeded" else 0), job_id
        if retried:  # a client that retried with its job id gets a job that finishes
            assert row["status"] == "succeeded", (job_id, row["error"])
    # A shim killed before it stored the capture: the relay fails the job with the reason.
    alone = job_row(job_store, "crash-shim-after_row-alone")
    assert alone["status"] == "failed" and "interrupted" in alone["error"]
    assert "under a new job id" in alone["error"]  # its id is taken by the failed job


def test_killing_shim_processes_during_a_burst_leaves_no_job_unfinished(
    own_queue_factory, engine, simulator, rng, tmp_path
):
    local, store, start_worker = own_queue_factory(outbox_grace_s=1.0, relay_interval_s=0.5)
    captures = [simulator.simulate(rng, sample_rate_hz=12_000.0, duration_s=0.25) for _ in range(8)]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    heard_202: set[str] = set()
    attempted: set[str] = set()
    answers: Counter[str] = Counter()
    stop = threading.Event()

    def submit(job_id: str, capture) -> bool:
        query = urllib.parse.urlencode({**capture_query(capture), "job_id": job_id})
        request = urllib.request.Request(
            f"{base}/predict?{query}",
            data=npy_bytes(capture.iq),
            method="POST",
            headers={"Content-Type": "application/x-npy"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                answers[str(response.status)] += 1
                return response.status == 202
        except urllib.error.HTTPError as exc:
            answers[str(exc.code)] += 1
            return False
        except OSError:  # the shim process died under the request
            answers["no answer"] += 1
            return False

    def client(number: int) -> None:
        sent = 0
        while not stop.is_set():
            job_id = f"burst-{number}-{sent}"
            attempted.add(job_id)
            capture = captures[(number + sent) % len(captures)]
            variant = capture.iq * np.complex64(1.0 + 1e-6 * sent)  # a new capture each time
            capture = replace(capture, iq=variant)
            for _ in range(20):  # the client retries with the same job id until it hears 202
                if submit(job_id, capture):
                    heard_202.add(job_id)
                    break
                time.sleep(0.1)
            sent += 1

    env = worker_env(local)
    with (
        cli_process(
            ["api", "--port", str(port), "--workers", "2"], tmp_path / "api.log", env
        ) as api,
        start_worker("burst") as worker,
    ):
        wait_until("the worker", lambda: bool(store.workers()), 60, worker)

        wait_until("the shim", lambda: shim_answers(base), 60, api)
        threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(8)]
        for thread in threads:
            thread.start()
        kills = 0
        for _ in range(10):
            wait_until("a shim worker process", lambda: bool(child_pids(api.pid)), 30, api)
            time.sleep(0.5)
            victims = child_pids(api.pid)
            if victims:
                os.kill(victims[0], signal.SIGKILL)
                kills += 1
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
        # Every job with a row, heard 202 or not (a shim may have died after writing it), is
        # finished by the worker or its relay.
        job_store = JobStore(engine)
        unfinished = []
        for job_id in sorted(attempted):
            if job_store.get(job_id) is None:
                continue  # never recorded: its client was never told 202 for it
            try:
                wait_final_row(job_store, job_id, timeout_s=60)
            except TimeoutError:
                unfinished.append(job_id)

    with engine.connect() as connection:
        rows = dict(
            connection.execute(
                sa.select(jobs.c.job_id, jobs.c.status).where(jobs.c.job_id.in_(attempted))
            ).all()
        )
    counts = results_per_job(engine, sorted(attempted))
    duplicated = [j for j, n in counts.items() if n > 1]
    statuses = Counter(rows.values())
    print(
        f"\n{kills} shim processes killed; {len(attempted)} job ids tried, {len(heard_202)} heard "
        f"202; answers {dict(answers)}; final: {dict(statuses)}; left unfinished: "
        f"{len(unfinished)}; duplicated results: {len(duplicated)}"
    )
    assert kills == 10 and heard_202
    assert unfinished == []
    assert all(rows[j] == "succeeded" for j in heard_202), [
        (j, rows.get(j)) for j in heard_202 if rows.get(j) != "succeeded"
    ][:5]
    assert duplicated == []
