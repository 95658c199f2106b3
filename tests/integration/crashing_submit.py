"""A submitting process that dies at a chosen step, as a SIGKILL would: no clean-up runs.

    python -m tests.integration.crashing_submit {shim|producer} STEP JOB_ID SEED

``shim`` accepts through the shim's own intake path (the services ``create_app`` builds),
``producer`` through the producer client; the settings come from ``HEIMDALL_*``. Steps:
``after_row`` (job row written), ``after_capture`` (IQ stored in Redis), ``during_publish``
(message sent, its confirm not received), ``after_confirm`` (RabbitMQ confirmed it). It exits
with code 9 at that step, or 0 if it got through (a bug in this helper or in the step names).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import amqp.channel
import numpy as np

from inference_worker.science.simulator import CaptureSimulator

STEPS = ("after_row", "after_capture", "during_publish", "after_confirm")
KILLED = 9


def die(*_: Any, **__: Any) -> None:
    sys.stdout.flush()
    os._exit(KILLED)


def then_die(call: Any) -> Any:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        call(*args, **kwargs)
        die()

    return wrapped


def send_without_confirm_then_die(self: amqp.channel.Channel, *args: Any, **kwargs: Any) -> None:
    kwargs.pop("confirm_timeout", None)
    if not self._confirm_selected:
        self._confirm_selected = True
        self.confirm_select()
    self._basic_publish(*args, **kwargs)
    die()


def capture_for(seed: int) -> Any:
    return CaptureSimulator().simulate(
        np.random.default_rng(seed), sample_rate_hz=12_000.0, duration_s=0.25
    )


def main(via: str, step: str, job_id: str, seed: int) -> None:
    capture = capture_for(seed)
    fields = {
        "sample_rate_hz": capture.sample_rate_hz,
        "frequency_mhz": capture.frequency_mhz,
        "receivers": list(capture.receivers),
        "job_id": job_id,
    }
    if step == "during_publish":
        amqp.channel.Channel.basic_publish_confirm = send_without_confirm_then_die
    if via == "shim":
        from api_shim.services import build_services
        from inference_worker.settings import load_settings

        intake = build_services(load_settings()).intake
        assert intake.jobs is not None
        if step == "after_row":  # a new job's capture goes with its note, in one round trip
            intake.store.put_blob_and_note = die  # type: ignore[method-assign]
        elif step == "after_capture":
            intake.publish = die
        elif step == "after_confirm":  # confirmed, not yet marked published in the row
            intake.publish = then_die(intake.publish)
        intake.accept(intake.check(capture.iq, fields))
        return
    from tasks.producer import CaptureProducer

    producer = CaptureProducer()
    if step == "after_capture":
        producer.intake.publish = die
    elif step == "after_confirm":
        producer.intake.publish = then_die(producer.intake.publish)
    producer.submit(capture.iq, **fields)


if __name__ == "__main__":
    via, step, job_id, seed = sys.argv[1:]
    assert via in ("shim", "producer") and step in STEPS
    main(via, step, job_id, int(seed))
