"""TDoA sets heard at HF through the real shim, queue and worker: located with ground-wave
paths the result cautions that its receivers likely heard the emitter by skywave; submitted
with ``propagation=skywave`` it is located with skywave paths, the layer reported."""

from __future__ import annotations

import numpy as np

from inference_worker.science.kiwi_sets import synthetic_set
from tests.helpers import heard_by_skywave
from tests.integration.helpers import post_tdoa, wait_final


def test_an_hf_sets_result_cautions_that_its_receivers_likely_heard_skywave(client, worker):
    hf = synthetic_set(
        np.random.default_rng(5), receivers=3, seconds=6.0, quirks=False, frequency_hz=10_000_000
    )
    view = wait_final(client, post_tdoa(client, hf).get_json()["job_id"])
    assert view["status"] == "succeeded", view
    cautions = view["result"]["cautions"]
    assert [c["code"] for c in cautions] == ["skywave"] and "10 MHz" in cautions[0]["detail"]
    # Heard by skywave and asked to, the worker locates it with skywave paths: no caution then,
    # the layer reported.
    asked = post_tdoa(client, heard_by_skywave(), propagation="skywave")
    assert asked.status_code == 202, asked.get_json()
    view = wait_final(client, asked.get_json()["job_id"])
    assert view["status"] == "succeeded", view
    result = view["result"]
    assert result["propagation"] == "skywave" and result["cautions"] == []
    assert 100 <= result["layer_height_km"] <= 450
    refused = post_tdoa(client, hf, propagation="ionosphere")
    assert (
        refused.status_code == 422
        and "propagation must be one of" in refused.get_json()["error"]["message"]
    )
