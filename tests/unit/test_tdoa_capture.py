"""A TDoA submission is checked before it is accepted: positions, files with usable GPS time, a
long enough common span, one tuned frequency; each refusal names the receiver and the reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pytest

from inference_worker.core.capture import CaptureError
from inference_worker.core.kiwi_wav import BLOCK_SAMPLES, FULL_SCALE, read_kiwi_wav, write_kiwi_wav
from inference_worker.core.recording_sets import block_prints, repeated_recording
from inference_worker.core.tdoa import solve
from inference_worker.core.tdoa_capture import (
    TdoaLimits,
    check_tdoa,
    out_of_order,
    parse_stations,
)
from inference_worker.core.time_differences import TdoaError
from inference_worker.science.kiwi_sets import synthetic_set
from tasks.contract import MessageError, read_message
from tasks.outbox import asked_otherwise
from tests.helpers import piece_of, task_message

LIMITS = TdoaLimits(max_receivers=6, min_overlap_s=2.0)


@pytest.fixture(scope="module")
def recordings():
    return synthetic_set(np.random.default_rng(7), receivers=3, seconds=6.0, quirks=False)


def fields(recordings, **changes):
    return {
        "receivers": json.dumps(recordings.positions()),
        "frequency_mhz": recordings.frequency_hz / 1e6,
        **changes,
    }


def test_a_good_set_is_accepted_with_its_positions_and_common_span(recordings):
    capture = check_tdoa(recordings.files, recordings.names, fields(recordings), LIMITS)
    assert [s.id for s in capture.stations] == [s.id for s in recordings.stations]
    assert capture.parts() == tuple(len(f) for f in recordings.files)
    assert capture.payload() == b"".join(recordings.files)
    assert 0.5 < capture.overlap_s <= 6.0
    assert capture.sample_rate_hz == 12_000.0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not json", "JSON list"),
        ('{"id": "a"}', "JSON list"),
        ('[{"id": "a", "lat": 1, "lon": 2}, {"id": "b", "lat": 1, "lon": 3}]', "3 to 6"),
        (
            '[{"id": "a", "lat": 91, "lon": 2}, {"id": "b", "lat": 1, "lon": 3}, '
            '{"id": "c", "lat": 1, "lon": 4}]',
            "receivers[0].lat must be between",
        ),
        (
            '[{"id": "a b", "lat": 1, "lon": 2}, {"id": "b", "lat": 1, "lon": 3}, '
            '{"id": "c", "lat": 1, "lon": 4}]',
            "receivers[0].id",
        ),
        (
            '[{"id": "a", "lat": 1, "lon": 2}, {"id": "a", "lat": 1, "lon": 3}, '
            '{"id": "c", "lat": 1, "lon": "x"}]',
            "receivers[2].lon must be a number",
        ),
        (  # an integer past float's range: math.isfinite of it raised OverflowError (a 500)
            '[{"id": "a", "lat": 1, "lon": 2}, {"id": "b", "lat": 1, "lon": 3}, '
            '{"id": "c", "lat": 1, "lon": 1' + "0" * 400 + "}]",
            "receivers[2].lon must be between",
        ),
        (
            '[{"id": "a", "lat": NaN, "lon": 2}, {"id": "b", "lat": 1, "lon": 3}, '
            '{"id": "c", "lat": 1, "lon": 4}]',
            "receivers[0].lat must be a number",
        ),
    ],
)
def test_bad_positions_are_refused_with_what_is_wrong(value, message):
    with pytest.raises(CaptureError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_stations(value, LIMITS)


def test_receivers_on_fewer_than_three_sites_are_refused_naming_them():
    # Two receivers of one site (100 m apart) and a third far away: one useful baseline.
    one_site = [
        {"id": "kiwi-a", "lat": 52.0, "lon": 5.0},
        {"id": "kiwi-b", "lat": 52.0009, "lon": 5.0},
        {"id": "far", "lat": 50.0, "lon": 10.0},
    ]
    with pytest.raises(CaptureError, match=r"3 receivers are at 2 place\(s\) \(kiwi-a, kiwi-b"):
        parse_stations(json.dumps(one_site), LIMITS)
    one_site[1]["lat"] = 52.01  # 1.1 km apart: two places
    assert len(parse_stations(json.dumps(one_site), LIMITS)[0]) == 3


def test_one_file_per_receiver_is_required(recordings):
    with pytest.raises(CaptureError, match="2 capture file"):
        check_tdoa(recordings.files[:2], recordings.names[:2], fields(recordings), LIMITS)


@pytest.mark.parametrize("copy", ["the same file", "a piece of it"])
def test_one_recording_sent_for_two_receivers_is_refused_naming_them(recordings, copy):
    first = recordings.files[0]
    other = first if copy == "the same file" else piece_of(first, 20, 80)
    assert other == first or other not in recordings.files
    files = (first, recordings.files[1], other)
    ids = [s.id for s in recordings.stations]
    with pytest.raises(CaptureError, match=f"receivers {ids[0]} and {ids[2]} were sent the same"):
        check_tdoa(files, recordings.names, fields(recordings), LIMITS)
    with pytest.raises(TdoaError, match=f"receivers {ids[0]} and {ids[2]} were sent the same"):
        solve(files, recordings.stations)  # a producer's job meets it at the worker


@pytest.mark.parametrize("block_samples", [200, 512, 1024])
def test_pieces_of_one_recording_share_blocks_of_whatever_size_it_has(recordings, block_samples):
    recording = read_kiwi_wav(recordings.files[0])
    blocks = -(-len(recording.iq) // block_samples)
    stamps = recording.gps_s[1] + np.arange(blocks) * block_samples / 12_001.0
    whole = read_kiwi_wav(write_kiwi_wav(recording.iq, stamps, block_samples=block_samples))
    piece = read_kiwi_wav(
        write_kiwi_wav(
            recording.iq[7 * block_samples : 20 * block_samples],
            stamps[7:],
            block_samples=block_samples,
        )
    )
    others = [block_prints(read_kiwi_wav(data)) for data in recordings.files[1:]]
    ids = [s.id for s in recordings.stations]
    assert repeated_recording(recordings.stations, [block_prints(whole), *others]) is None
    found = repeated_recording(
        recordings.stations, [block_prints(whole), others[0], block_prints(piece)]
    )
    assert found is not None and f"receivers {ids[0]} and {ids[2]}" in found


def test_recordings_sharing_only_silence_are_not_taken_for_copies(recordings):
    """Blocks that hardly vary (a dropout's zeros) may match in any two recordings."""
    prints = []
    for data in recordings.files:
        recording = read_kiwi_wav(data)
        iq = recording.iq.copy()
        iq[: 4 * BLOCK_SAMPLES] = 0.0
        iq[4 * BLOCK_SAMPLES : 8 * BLOCK_SAMPLES] = (3 + 2j) / FULL_SCALE
        quiet = read_kiwi_wav(write_kiwi_wav(iq, recording.gps_s, fix_age=recording.fix_age))
        prints.append(block_prints(quiet))
        assert len(prints[-1]) == len(quiet.block_start) - 8  # the rest are compared
    assert repeated_recording(recordings.stations, prints) is None


def test_a_recording_without_gps_time_is_refused_naming_its_receiver(recordings):
    silent = write_kiwi_wav(np.zeros(4096, np.complex64), np.full(8, np.nan))
    files = (recordings.files[0], silent, recordings.files[2])
    with pytest.raises(CaptureError, match=f"receiver {recordings.stations[1].id}.*GPS"):
        check_tdoa(files, recordings.names, fields(recordings), LIMITS)


def test_recordings_that_do_not_overlap_long_enough_are_refused(recordings):
    with pytest.raises(CaptureError, match="overlap"):
        check_tdoa(
            recordings.files,
            recordings.names,
            fields(recordings),
            TdoaLimits(min_overlap_s=30.0),
        )


def test_recordings_of_another_frequency_are_refused(recordings):
    names = list(recordings.names)
    names[2] = names[2].replace(f"_{recordings.frequency_hz}_", "_198000_")
    with pytest.raises(CaptureError, match="198 kHz.*same frequency"):
        check_tdoa(recordings.files, names, fields(recordings), LIMITS)


def test_files_named_for_other_receivers_of_the_set_are_refused(recordings):
    ids = [s.id for s in recordings.stations]
    names = [recordings.names[1], recordings.names[0], recordings.names[2]]
    with pytest.raises(CaptureError, match=f"receiver {ids[0]} .* named for receiver {ids[1]}"):
        check_tdoa(recordings.files, names, fields(recordings), LIMITS)
    assert "named for" in str(out_of_order(["a", "B"], ["x_20261130T120000Z_77500_b_iq.wav", ""]))
    # Names for stations the submission does not list, or none, say nothing of the order.
    assert out_of_order(["a", "b"], ["20261130T120000Z_77500_c_iq.wav", "b.wav"]) is None
    assert out_of_order(["a", "b"], ["20261130T120000Z_77500_iq.wav", ""]) is None


def test_recordings_made_apart_by_their_names_are_refused_and_names_date_a_set(recordings):
    # The stamps give seconds of the GPS week: a week apart at the same hour, they would match.
    capture = check_tdoa(recordings.files, recordings.names, fields(recordings), LIMITS)
    assert capture.capture_time == datetime(2026, 11, 30, 12, tzinfo=UTC)  # the names' start
    told = fields(recordings, capture_time="2026-11-30T12:00:03Z")
    assert check_tdoa(recordings.files, recordings.names, told, LIMITS).capture_time.second == 3
    names = list(recordings.names)
    names[1] = names[1].replace("20261130T120000Z", "20261123T120000Z")
    label = f"receiver {recordings.stations[1].id} \\({names[1]}\\) and receiver"
    with pytest.raises(CaptureError, match=f"{label}.*at different times.*2026-11-23 12:00:00"):
        check_tdoa(recordings.files, names, fields(recordings), LIMITS)
    # A computer's clock a few minutes off is not taken for recordings made apart.
    names[1] = names[1].replace("20261123T120000Z", "20261130T120400Z")
    assert check_tdoa(recordings.files, names, fields(recordings), LIMITS).overlap_s > 0


def messages() -> tuple[dict, dict]:
    """A model capture's task message and a TDoA set's built on it."""
    base = task_message(np.zeros((3, 10), np.complex64), "j", "k")
    stations = [{"id": r, "lat": 1.0, "lon": float(i)} for i, r in enumerate(base["receivers"])]
    return base, {**base, "method": "tdoa", "stations": stations, "parts": [10, 10, 10]}


def test_a_tdoa_message_must_carry_positions_and_parts():
    base, tdoa = messages()
    assert read_message(tdoa).method == "tdoa"
    with pytest.raises(MessageError, match="stations and parts"):
        read_message({**tdoa, "parts": None})
    with pytest.raises(MessageError, match="follow receivers"):
        read_message({**tdoa, "parts": [10, 10]})
    with pytest.raises(MessageError, match="exactly 3"):
        read_message({**base, "receivers": ["a", "b", "c", "d"]})
    with pytest.raises(MessageError, match="parts.0"):  # a file cannot be -5 bytes long
        read_message({**tdoa, "parts": [-5, 20, 15]})
    high = [{**tdoa["stations"][0], "height_m": 1e300}, *tdoa["stations"][1:]]
    with pytest.raises(MessageError, match="stations.0.height_m"):  # bounded as the shim does
        read_message({**tdoa, "stations": high})
    assert read_message({**tdoa, "stations": [{**high[0], "height_m": 250.0}, *high[1:]]})


def test_a_model_message_is_sent_as_before_tdoa():
    message = read_message(task_message(np.zeros((3, 10), np.complex64), "j", "k"))
    assert not {"method", "stations", "parts", "expect_emitter"} & set(message.to_json())


def test_where_the_emitter_is_expected_is_checked_and_sent_only_when_said(recordings):
    plain = check_tdoa(recordings.files, recordings.names, fields(recordings), LIMITS)
    assert plain.expect_emitter == "anywhere"
    among = fields(recordings, expect_emitter="among_receivers")
    assert check_tdoa(recordings.files, recordings.names, among, LIMITS).expect_emitter == (
        "among_receivers"
    )
    with pytest.raises(CaptureError, match="expect_emitter must be one of 'anywhere', 'among_"):
        check_tdoa(
            recordings.files, recordings.names, fields(recordings, expect_emitter="in"), LIMITS
        )
    base, tdoa = messages()
    # A worker of a release before the field reads what it is not told (extra fields refused).
    assert "expect_emitter" not in read_message(tdoa).to_json()
    told = read_message({**tdoa, "expect_emitter": "among_receivers"})
    assert told.to_json()["expect_emitter"] == "among_receivers"
    # The same files and job id sent expecting otherwise ask for another job.
    assert asked_otherwise(read_message(tdoa), told) == [
        "expect_emitter (first: 'anywhere', now: 'among_receivers')"
    ]
    with pytest.raises(MessageError, match="expect_emitter and propagation belong to tdoa"):
        read_message({**base, "expect_emitter": "among_receivers"})


def test_skywave_propagation_is_checked_and_sent_only_when_said(recordings):
    assert check_tdoa(
        recordings.files, recordings.names, fields(recordings), LIMITS
    ).propagation == ("ground")
    sky = fields(recordings, propagation="skywave")
    assert check_tdoa(recordings.files, recordings.names, sky, LIMITS).propagation == "skywave"
    with pytest.raises(CaptureError, match="propagation must be one of 'ground', 'skywave'"):
        check_tdoa(
            recordings.files, recordings.names, fields(recordings, propagation="sky"), LIMITS
        )
    base, tdoa = messages()
    assert "propagation" not in read_message(tdoa).to_json()
    told = read_message({**tdoa, "propagation": "skywave"})
    assert told.to_json()["propagation"] == "skywave"
    assert asked_otherwise(read_message(tdoa), told) == [
        "propagation (first: 'ground', now: 'skywave')"
    ]
    with pytest.raises(MessageError, match="belong to tdoa"):
        read_message({**base, "propagation": "skywave"})


def test_header_rates_of_12000_and_12001_are_both_accepted_but_other_modes_are_not(recordings):
    files = list(recordings.files)
    files[0] = files[0][:24] + (12_001).to_bytes(4, "little") + files[0][28:]
    assert check_tdoa(files, recordings.names, fields(recordings), LIMITS).n_samples > 0
    files[0] = files[0][:24] + (20_250).to_bytes(4, "little") + files[0][28:]
    with pytest.raises(CaptureError, match="sample rates differ"):
        check_tdoa(files, recordings.names, fields(recordings), LIMITS)


def test_a_span_too_short_is_never_shown_as_long_enough():
    from inference_worker.core.recording_sets import too_short

    assert too_short(100.0, 102.0, 2.0) is None
    assert "overlap for 1.9 s of GPS time; at least 2 s" in str(too_short(100.0, 101.96, 2.0))
    assert "overlap for 0.0 s" in str(too_short(100.0, 99.0, 2.0))  # none at all
