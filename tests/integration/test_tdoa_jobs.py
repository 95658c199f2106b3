"""TDoA jobs through the real shim, queue and worker: KiwiSDR IQ WAV files posted as multipart
are located by time differences, recorded like any job, and drawn as GeoJSON and PNG; bad sets
are refused with 422 and leave nothing behind."""

from __future__ import annotations

import http.client
import json
import urllib.request
import uuid
from contextlib import closing

import numpy as np
import pytest
import sqlalchemy as sa
from urllib3 import encode_multipart_formdata

from inference_worker.cli.processes import wait_until
from inference_worker.core.capture import CaptureError, CaptureTooLarge
from inference_worker.core.ellipse import contains, distance_m, estimate_from_result
from inference_worker.core.kiwi_wav import read_kiwi_wav, write_kiwi_wav
from inference_worker.science.kiwi_sets import rewritten, synthetic_set
from inference_worker.storage.schema import jobs
from tests.helpers import piece_of
from tests.integration.helpers import post_tdoa, tdoa_form, wait_final


@pytest.fixture(scope="module")
def recordings():
    """Four receivers, a modulated signal, every quirk of real files, 10 s."""
    return synthetic_set(
        np.random.default_rng(2026),
        receivers=4,
        seconds=10.0,
        signal="modulated",
        quirks=("zero_first_stamp", "stamp_jump", "lost_fix", "cut_short"),
    )


def count_jobs(engine, job_id: str) -> int:
    with engine.connect() as connection:
        return connection.execute(
            sa.select(sa.func.count()).where(jobs.c.job_id == job_id)
        ).scalar_one()


def test_a_tdoa_set_is_located_and_recorded_like_any_job(
    client, worker, recordings, engine, redis_client, settings
):
    response = post_tdoa(client, recordings)
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["job_id"]

    view = wait_final(client, job_id)

    assert view["status"] == "succeeded", view
    assert view["model_version"] == "tdoa-1"
    assert view["receivers"] == [s.id for s in recordings.stations]
    result = view["result"]
    assert result["method"] == "tdoa"
    assert len(result["pairs"]) == 6 and all(p["sigma_us"] > 0 for p in result["pairs"])
    assert distance_m(result["lat"], result["lon"], *recordings.emitter) < 2_000
    lat, lon = recordings.emitter
    assert contains(estimate_from_result(result), lat, lon, 0.95)
    assert "tdoa_ms" in view["timings"]
    assert result["fit_chi2"] <= result["fit_chi2_bound"] and result["excluded"] == []
    assert result["sigma_scale"] == 1.0  # delays that fit are not widened
    assert result["among_receivers"] is (recordings.outside_km == 0)  # inside their hull
    # The stamp jump left that receiver's consistent part, not the whole receiver, out.
    jumped = recordings.quirks["stamp_jump"]
    assert next(r for r in result["receivers"] if r["id"] == jumped)["rejected_blocks"] > 0
    # ... and the result says so; no skywave caution at 77.5 kHz (a ground wave reaches all).
    assert [(c["code"], c["receivers"]) for c in result["cautions"]] == [
        ("partly_unused", [jumped])
    ]
    assert [r["gps_fix_age_s"] for r in result["receivers"]] == [0, 0, 0, 0]  # as written
    assert [r["frequency_offset_hz"] for r in result["receivers"]] == [0.0, 0.0, 0.0, 0.0]
    assert [r["lost_s"] for r in result["receivers"]] == [0.0, 0.0, 0.0, 0.0]  # a jump, no loss

    with_geojson = client.get(f"/jobs/{job_id}?include=geojson").get_json()
    kinds = [f["properties"]["kind"] for f in with_geojson["geojson"]["features"]]
    assert kinds.count("receiver") == 4 and kinds.count("likelihood_contour") == 2
    picture = client.get(f"/jobs/{job_id}/map.png")
    assert picture.status_code == 200 and picture.mimetype == "image/png"
    assert picture.data[:4] == b"\x89PNG"
    with engine.connect() as connection:
        row = connection.execute(sa.select(jobs).where(jobs.c.job_id == job_id)).mappings().one()
    assert row["status"] == "succeeded" and row["message"]["method"] == "tdoa"
    assert redis_client.exists(f"{settings.redis_prefix}blob:{job_id}") == 0


def test_delays_that_fit_no_one_position_are_widened_and_counted(client, worker, recordings):
    # One receiver's time 10 µs off: four receivers cannot say which, so the job's delays are
    # widened to fit, and the worker counts the fit for the operators' alert.
    files = recordings.files_with(0, rewritten(read_kiwi_wav(recordings.files[0]), shift_s=10e-6))
    view = wait_final(client, post_tdoa(client, recordings, files=files).get_json()["job_id"])
    assert view["status"] == "succeeded", view
    result = view["result"]
    assert result["fit_chi2"] > result["fit_chi2_bound"] and result["sigma_scale"] > 1
    wait_until("the worker to count the widened fit", lambda: fits_counted(worker, "widened"), 30)


def fits_counted(worker, fit: str) -> bool:
    """Whether the worker's metrics count a TDoA fit of this kind."""
    url = f"http://127.0.0.1:{worker.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return any(
        line.startswith(f'heimdall_tdoa_fits_total{{fit="{fit}"}}') and float(line.split()[-1])
        for line in text.splitlines()
    )


def test_a_receiver_hearing_nothing_in_common_is_left_out_and_the_others_located(
    client, worker, recordings
):
    # RX3's time 0.8 s off: it shares no signal with the others at the same GPS time, as a
    # receiver that does not hear the emitter. The three others locate it (before: the job
    # failed), the result naming the one left out and why.
    files = recordings.files_with(2, rewritten(read_kiwi_wav(recordings.files[2]), shift_s=0.8))
    view = wait_final(client, post_tdoa(client, recordings, files=files).get_json()["job_id"])
    assert view["status"] == "succeeded", view
    result = view["result"]
    assert [left["id"] for left in result["excluded"]] == ["RX3"]
    assert "no signal in common" in result["excluded"][0]["reason"]
    assert [r["frequency_offset_hz"] for r in result["receivers"]] == [0.0, 0.0, None, 0.0]
    assert all("RX3" not in pair["receivers"] for pair in result["pairs"])
    assert len(result["pairs"]) == 3
    lat, lon = recordings.emitter
    assert contains(estimate_from_result(result), lat, lon, 0.95)
    wait_until("the worker to count the fit", lambda: fits_counted(worker, "unheard"), 30)


def test_a_producer_enqueues_a_set_without_http_and_it_is_located(
    client, worker, recordings, engine, settings
):
    from tasks.producer import CaptureProducer

    files = list(zip(recordings.names, recordings.files, strict=True))
    bad = [("", b"RIFF-but-not-a-wav"), *files[1:]]
    with CaptureProducer(settings=settings) as producer:
        job_id = producer.submit_tdoa(
            files,
            receivers=recordings.positions(),
            frequency_mhz=recordings.frequency_hz / 1e6,
            job_id=f"tdoa-queue-{uuid.uuid4()}",
        )
        view = producer.wait(job_id, timeout_s=60)
        # A set the shim would refuse is refused here too, naming the receiver; nothing is sent.
        refused_id = f"refused-{uuid.uuid4()}"
        first = recordings.stations[0].id
        with pytest.raises(CaptureError, match=f"receiver {first}"):
            producer.submit_tdoa(
                bad,
                receivers=recordings.positions(),
                frequency_mhz=recordings.frequency_hz / 1e6,
                job_id=refused_id,
            )
        # as is a set larger than one request to the shim may be
    small = settings.model_copy(update={"max_body_bytes": 1024})
    with CaptureProducer(settings=small) as producer, pytest.raises(CaptureTooLarge, match="MiB"):
        producer.submit_tdoa(
            files, receivers=recordings.positions(), frequency_mhz=recordings.frequency_hz / 1e6
        )
    assert view["status"] == "succeeded", view
    assert view["model_version"] == "tdoa-1" and view["result"]["method"] == "tdoa"
    assert distance_m(view["result"]["lat"], view["result"]["lon"], *recordings.emitter) < 2_000
    assert client.get(f"/jobs/{job_id}").get_json()["result"]["method"] == "tdoa"
    assert count_jobs(engine, refused_id) == 0


def test_a_model_job_has_no_map(client, worker, capture):
    from tests.helpers import json_body

    job_id = client.post("/predict", json=json_body(capture)).get_json()["job_id"]
    wait_final(client, job_id)
    response = client.get(f"/jobs/{job_id}/map.png")
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "no_map"


def test_a_client_job_id_is_idempotent_for_tdoa_sets(client, worker, recordings):
    job_id = f"tdoa-{uuid.uuid4()}"
    first = post_tdoa(client, recordings, job_id=job_id)
    again = post_tdoa(client, recordings, job_id=job_id)
    assert first.status_code == again.status_code == 202
    assert again.get_json()["created"] is False
    other = list(recordings.files)
    other[0] = other[0][:-4096]  # a different recording under the same id
    conflict = post_tdoa(client, recordings, files=other, job_id=job_id)
    assert conflict.status_code == 409
    assert wait_final(client, job_id)["status"] == "succeeded"


def test_an_emitter_expected_among_the_receivers_takes_the_place_there(client, worker):
    # Three receivers, two crossings; the higher lies 643 km off, the emitter among them.
    ambiguous = synthetic_set(
        np.random.default_rng(160), receivers=3, seconds=10.0, signal="modulated", quirks=False
    )
    plain = wait_final(client, post_tdoa(client, ambiguous).get_json()["job_id"])["result"]
    response = post_tdoa(client, ambiguous, expect_emitter="among_receivers")
    assert response.status_code == 202, response.get_json()
    view = wait_final(client, response.get_json()["job_id"])
    assert view["status"] == "succeeded", view
    told = view["result"]
    assert plain["chosen_by"] == "likelihood" and not plain["among_receivers"]
    assert told["chosen_by"] == "among_receivers" and told["among_receivers"]
    assert distance_m(told["lat"], told["lon"], *ambiguous.emitter) < 2_000
    assert distance_m(plain["lat"], plain["lon"], *ambiguous.emitter) > 100_000
    [other] = told["alternatives"]
    assert (other["lat"], other["lon"], other["weight"]) == (
        plain["lat"],
        plain["lon"],
        plain["weight"],
    )


@pytest.mark.parametrize(
    "case",
    [
        "no_gps",
        "too_few_files",
        "other_frequency",
        "bad_positions",
        "one_site",
        "expectation",
        "one_file_twice",
        "one_recording_cut_in_two",
        "files_out_of_order",
    ],
)
def test_bad_sets_are_refused_with_422_and_nothing_recorded(client, recordings, engine, case):
    job_id = f"refused-{uuid.uuid4()}"
    files, names = list(recordings.files), list(recordings.names)
    fields: dict[str, str] = {"job_id": job_id}
    if case == "no_gps":
        files[1] = write_kiwi_wav(np.zeros(8192, np.complex64), np.full(16, np.nan))
        expected = "GPS"
    elif case == "too_few_files":
        files, names = files[:3], names[:3]
        expected = "3 capture file"
    elif case == "other_frequency":
        names[0] = names[0].replace(f"_{recordings.frequency_hz}_", "_10000000_")
        expected = "same frequency"
    elif case == "bad_positions":
        fields["receivers"] = '[{"id": "a", "lat": 100, "lon": 0}]'
        expected = "3 to"
    elif case == "expectation":
        fields["expect_emitter"] = "inside"
        expected = "expect_emitter must be one of"
    elif case in ("one_file_twice", "one_recording_cut_in_two"):
        files[2] = files[0] if case == "one_file_twice" else piece_of(files[0], 0, 200)
        expected = "were sent the same recording"
    elif case == "files_out_of_order":  # each file named for its station, two swapped
        files[0], files[1], names[0], names[1] = files[1], files[0], names[1], names[0]
        expected = f"is named for receiver {recordings.stations[1].id}"
    else:  # three of the four receivers given one site's position
        positions = recordings.positions()
        for k in (1, 2):
            positions[k] = {**positions[k], "lat": positions[0]["lat"], "lon": positions[0]["lon"]}
        fields["receivers"] = json.dumps(positions)
        expected = "at 2 place(s)"
    response = post_tdoa(client, recordings, files=files, names=names, **fields)
    assert response.status_code == 422, response.get_json()
    assert response.get_json()["error"]["code"] == "invalid_capture"
    assert expected in response.get_json()["error"]["message"]
    assert count_jobs(engine, job_id) == 0


def test_the_cli_submits_a_set_and_writes_its_map(
    worker, recordings, tmp_path, settings, app, engine
):
    """``heimdall-inference tdoa submit`` against a real shim process."""
    from inference_worker.cli.processes import cli_process, wait_until
    from tests.integration.helpers import free_port, worker_env
    from tests.integration.shim_processes import shim_answers

    for name, data in zip(recordings.names, recordings.files, strict=True):
        (tmp_path / name).write_bytes(data)
    positions = {s.id: {"lat": s.lat, "lon": s.lon} for s in recordings.stations}
    (tmp_path / "positions.json").write_text(json.dumps(positions))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = worker_env(settings)

    with cli_process(
        ["api", "--port", str(port), "--workers", "1"], tmp_path / "api.log", env
    ) as api:
        wait_until("the shim", lambda: shim_answers(url), 60, api)
        args = [
            "tdoa", "submit", *[str(tmp_path / n) for n in reversed(recordings.names)],
            "--receivers", str(tmp_path / "positions.json"),
            "--url", url, "--json",
            "--map", str(tmp_path / "map.png"), "--geojson", str(tmp_path / "result.geojson"),
        ]  # fmt: skip
        with cli_process(args, tmp_path / "submit.log", env) as submit:
            assert submit.wait(timeout=120) == 0, (tmp_path / "submit.log").read_text()
        # A body sent in chunks, without a Content-Length, reads the same.
        body, content_type = encode_multipart_formdata(tdoa_form(recordings))
        pieces = (body[at : at + 65_536] for at in range(0, len(body), 65_536))
        with closing(http.client.HTTPConnection("127.0.0.1", port, timeout=60)) as connection:
            connection.request(
                "POST", "/predict", pieces, {"Content-Type": content_type}, encode_chunked=True
            )
            answer = connection.getresponse()
            assert answer.status == 202, answer.read()
    output = (tmp_path / "submit.log").read_text()
    view, _ = json.JSONDecoder().raw_decode(output[output.index("{") :])
    assert view["status"] == "succeeded"
    assert view["receivers"] == [s.id for s in reversed(recordings.stations)]
    assert distance_m(view["result"]["lat"], view["result"]["lon"], *recordings.emitter) < 2_000
    assert (tmp_path / "map.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "result.geojson").read_text())["type"] == "FeatureCollection"

    # And straight onto the queue, without the shim, with the same output
    args = [
        "tdoa", "submit", *[str(tmp_path / n) for n in recordings.names],
        "--receivers", str(tmp_path / "positions.json"), "--via", "queue",
        "--expect-emitter", "among_receivers",
        "--map", str(tmp_path / "queued.png"), "--geojson", str(tmp_path / "queued.geojson"),
    ]  # fmt: skip
    with cli_process(args, tmp_path / "queued.log", env) as submit:
        assert submit.wait(timeout=120) == 0, (tmp_path / "queued.log").read_text()
    printed = (tmp_path / "queued.log").read_text()
    assert "accepted" in printed and "likelihood map written" in printed
    assert (tmp_path / "queued.png").read_bytes()[:4] == b"\x89PNG"
    queued = json.loads((tmp_path / "queued.geojson").read_text())
    kinds = [f["properties"]["kind"] for f in queued["features"]]
    assert kinds.count("receiver") == 4 and kinds.count("likelihood_contour") == 2
    [estimate] = [f for f in queued["features"] if f["properties"]["kind"] == "estimate"]
    # One place: the likelihood's alone, whatever is expected; the expectation went with the job.
    assert estimate["properties"]["chosen_by"] == "likelihood"
    job_id = printed.split("job ", 1)[1].split(" accepted", 1)[0]
    with engine.connect() as connection:
        message = connection.execute(
            sa.select(jobs.c.message).where(jobs.c.job_id == job_id)
        ).scalar_one()
    assert message["expect_emitter"] == "among_receivers"
