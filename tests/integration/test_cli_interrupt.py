"""Ctrl-C while the command line waits on a job ends the wait, not the job: it says so, with
where to see the job later, and the job stays accepted (a traceback before)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np

from inference_worker.storage.database import JobStore
from tests.integration.helpers import queue_messages, wait_final_row


def test_ctrl_c_while_waiting_on_a_job_leaves_the_job_accepted_and_says_where_to_see_it(
    own_queue, capture, engine, tmp_path
):
    local, _, start_worker = own_queue
    path = tmp_path / "capture.npy"
    np.save(path, capture.iq)
    env = {
        **os.environ,
        "HEIMDALL_QUEUE": local.queue,  # no worker consumes it: the wait goes on
        "HEIMDALL_REDIS_PREFIX": local.redis_prefix,
        "HEIMDALL_DATABASE_SCHEMA": local.database_schema,
    }
    submit = ["submit", str(path), "--sample-rate", "12000", "--frequency-mhz", "145.5"]
    submit += ["--receivers", ",".join(capture.receivers), "--via", "queue"]
    process = subprocess.Popen(
        [sys.executable, "-m", "inference_worker.cli", *submit],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    submitted = process.stdout.readline()  # printed once the job is accepted, before the wait
    assert submitted.startswith("submitted job "), submitted
    job_id = submitted.split()[2]
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)

    assert process.returncode == 130
    assert err == (
        f"interrupted: job {job_id} goes on (`heimdall-inference status {job_id}` shows it)\n"
    )
    assert queue_messages(local.broker_url, local.queue) == 1
    with start_worker("worker"):  # the job it left waits for one, and is located
        assert wait_final_row(JobStore(engine), job_id)["status"] == "succeeded"
