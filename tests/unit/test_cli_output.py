"""What the command line prints of a job and of the shim's errors, and the arguments it refuses
(pure logic)."""

from __future__ import annotations

import argparse
import re

import numpy as np
import pytest

from inference_worker.cli.arguments import count, count_range, number
from inference_worker.cli.jobs import print_job
from inference_worker.cli.main import build_parser
from inference_worker.cli.tdoa import match_positions
from inference_worker.cli.upkeep import PruneProgress


def succeeded(quality: dict | None) -> dict:
    ellipse = {"semi_major_m": 18_400.0, "semi_minor_m": 15_100.0, "orientation_deg": 99.0}
    result = {"lat": 45.1, "lon": 7.5, "ellipses": {"68": ellipse, "95": ellipse}}
    if quality is not None:
        result["quality"] = quality
    return {
        "job_id": "j1",
        "status": "succeeded",
        "model_version": "2.1.0",
        "cache_hit": False,
        "result": result,
    }


def test_a_position_outside_the_domain_is_printed_with_its_reasons_and_cautions(capsys):
    quality = {
        "in_domain": False,
        "reasons": [
            {"code": "clipping", "detail": "up to 53.7 % of samples", "receivers": ["a", "b"]},
            {"code": "power_inconsistent", "detail": "misfit 54.9, limit 13.8"},
        ],
        "cautions": [{"code": "outside_region", "detail": "Bayes factor 2.1"}],
    }
    print_job(succeeded(quality), as_json=False)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "job j1: succeeded"
    assert "  outside the model's domain: do not trust this position or its ellipses" in lines
    assert "  reason clipping (a, b): up to 53.7 % of samples" in lines
    assert "  reason power_inconsistent: misfit 54.9, limit 13.8" in lines
    assert lines[-1] == "  caution outside_region: Bayes factor 2.1"


def test_a_position_in_the_domain_prints_no_verdict(capsys):
    for quality in (None, {"in_domain": True, "reasons": [], "cautions": []}):
        print_job(succeeded(quality), as_json=False)
        out = capsys.readouterr().out
        assert "95% ellipse: 18.4 x 15.1 km" in out
        assert "domain" not in out and "reason" not in out and "caution" not in out


def test_number_arguments_are_refused_outside_their_range_naming_it():
    share, days = number(0.0, 1.0), number(0.0, above=True)
    assert share("0") == 0.0 and share("1") == 1.0 and share("0.25") == 0.25
    assert days("0.000001") == 1e-6
    for parse, text, why in (
        (share, "2", "2 is out of range: give a number from 0 to 1"),
        (share, "nan", "nan is out of range: give a number from 0 to 1"),
        (share, "-0.1", "-0.1 is out of range"),
        (days, "0", "0 is out of range: give a number more than 0"),
        (days, "inf", "inf is out of range"),
        (days, "ten", "'ten' is not a number"),
    ):
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(why)):
            parse(text)


def test_the_command_line_refuses_a_challenger_share_above_one(capsys):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["models", "reload", "--challenger-fraction", "2"])
    assert exited.value.code == 2
    assert "--challenger-fraction: 2 is out of range" in capsys.readouterr().err


def test_counts_are_whole_numbers_of_at_least_their_least():
    assert count(1)("6") == 6
    for text, why in (("0", "0 is too few: give at least 1"), ("2.5", "'2.5' is not a whole")):
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(why)):
            count(1)(text)


def test_a_count_range_is_one_number_or_the_lower_first_within_its_bounds():
    assert count_range(3, 64)("5") == (5, 5) and count_range(3, 64)("3-5") == (3, 5)
    for text, why in (("7-5", "the lower first"), ("2-5", "within 3-64"), ("x", "N or LO-HI")):
        with pytest.raises(argparse.ArgumentTypeError, match=why):
            count_range(3, 64)(text)


@pytest.mark.parametrize(
    ("args", "refusal"),
    [
        (["api", "--port", "70000"], "--port: 70000 is too many: give at most 65535"),
        (["flower", "--port", "0"], "--port: 0 is too few: give at least 1"),
        (["api", "--workers", "0"], "--workers: 0 is too few"),
        (["worker", "--concurrency", "-2"], "--concurrency: -2 is too few"),
        (
            ["worker", "--concurrency", "20000"],
            "--concurrency: 20000 is too many: give at most 256",
        ),
        (["api", "--workers", "20000"], "--workers: 20000 is too many: give at most 256"),
        # ages past PostgreSQL's dates reached it, and came back as a traceback
        (
            ["jobs", "stuck", "--older-than", "1e12"],
            "--older-than: 1e12 is out of range: give a number from 0 to 31536000",
        ),
        (
            ["jobs", "prune", "--older-than-days", "1e9"],
            "--older-than-days: 1e9 is out of range: give a number more than 0 and at most 36500",
        ),
    ],
)
def test_commands_refuse_numbers_they_cannot_use(capsys, args, refusal):
    """A port past 65535 reached gunicorn's bind as a traceback; a count of 0 processes fell
    back to the settings' without a word."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(args)
    assert exited.value.code == 2
    assert refusal in capsys.readouterr().err


def test_small_ellipses_print_in_metres(capsys):
    view = succeeded(None)
    small = {"semi_major_m": 175.4, "semi_minor_m": 99.6, "orientation_deg": 136.0}
    view["result"]["ellipses"] = {"68": small, "95": small}
    print_job(view, as_json=False)
    assert "  68% ellipse: 175 x 100 m, major axis 136° from north" in capsys.readouterr().out


def test_a_tdoa_job_prints_its_pairs_and_alternatives(capsys):
    view = succeeded(None)
    view["result"].update(
        method="tdoa",
        overlap_s=26.4,
        fit_chi2=0.8,
        pairs=[
            {
                "receivers": ["A", "B"],
                "delay_us": -412.73,
                "sigma_us": 0.44,
                "windows_used": 52,
                "windows_total": 52,
            }
        ],
        weight=0.93,
        among_receivers=True,
        receivers=[
            {"id": "A", "gps_fix_age_s": 2, "frequency_offset_hz": 0.1, "lost_s": 0.0},
            {"id": "B", "gps_fix_age_s": 180, "frequency_offset_hz": -2.04, "lost_s": 7.25},
        ],
        alternatives=[
            {"lat": 48.49, "lon": 7.39, "weight": 0.07, "among_receivers": False},
            {"lat": 46.0, "lon": 3.0, "weight": 0.01, "ellipses": {"95": {"semi_major_m": 2.4e6}}},
        ],
    )
    print_job(view, as_json=False)
    out = capsys.readouterr().out
    assert out.startswith(
        "job j1: succeeded\nposition      45.10000, 7.50000 (weight 0.93, among the receivers; "
        "also possible below)\n"
    )
    assert "A - B" in out and "-412.73 us ± 0.44 (52/52 windows)" in out
    assert "also possible 48.49000, 7.39000 (weight 0.07): add a receiver" in out
    assert "46.00000, 3.00000 (weight 0.01, its 95% ellipse reaching 2,400.0 km): add" in out
    assert "beyond" not in out and "left out" not in out
    assert "stale GPS     B: its GPS solution was up to 180 s old" in out
    assert "stale GPS     A" not in out and "expected there" not in out
    assert "frequency     B: heard -2.04 Hz off the others" in out
    assert "frequency     A" not in out
    assert "blocks lost   B: 7.2 s of its recording never arrived" in out
    assert "blocks lost   A" not in out
    view["result"]["chosen_by"] = "among_receivers"
    print_job(view, as_json=False)
    assert "(weight 0.93, among the receivers, taken as the emitter was expected there; also" in (
        capsys.readouterr().out
    )


def test_a_tdoa_fit_beyond_its_bound_and_a_receiver_left_out_are_said(capsys):
    view = succeeded(None)
    view["result"].update(method="tdoa", overlap_s=9.5, fit_chi2=22.4, fit_chi2_bound=18.5)
    view["result"].update(pairs=[], alternatives=[])
    view["result"]["excluded"] = [{"id": "RX2", "reason": "its delays disagree"}]
    print_job(view, as_json=False)
    out = capsys.readouterr().out
    assert "beyond 18.5: the delays agree with no one position" in out
    assert "left out      RX2: its delays disagree" in out
    assert "widened" not in out


def test_a_tdoa_fit_widened_to_fit_says_so(capsys):
    view = succeeded(None)
    view["result"].update(method="tdoa", overlap_s=9.5, fit_chi2=248.2, fit_chi2_bound=18.5)
    view["result"].update(sigma_scale=7.9, pairs=[], alternatives=[])
    print_job(view, as_json=False)
    out = capsys.readouterr().out
    assert "their uncertainties were widened ×7.9 to fit, the ellipses with them" in out
    assert "too small" not in out


def test_a_prune_by_hand_says_how_far_it_has_come(capsys):
    progress = PruneProgress(every_s=0.0)
    progress(5_000)
    progress(10_000)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" so far")[0].strip() for line in lines] == [
        "deleted 5000",
        "deleted 10000",
    ]


def test_a_list_of_the_files_stations_in_another_order_is_matched_by_them():
    names = [f"20261130T120000Z_77500_{s}_iq.wav" for s in ("A", "B", "C")]
    listed = [{"id": s, "lat": 40.0 + k, "lon": 8.0} for k, s in enumerate(("b", "C", "A"))]
    assert [r["id"] for r in match_positions(listed, names)] == ["A", "b", "C"]
    other = [{"id": s, "lat": 40.0 + k, "lon": 8.0} for k, s in enumerate(("X", "C", "A"))]
    assert match_positions(other, names) == other  # not the files' stations: in file order


def test_a_station_missing_from_the_positions_is_named_with_those_there(capsys):
    names = ["20261130T120000Z_77500_A_iq.wav", "20261130T120000Z_77500_B_iq.wav"]
    assert match_positions({"a": [1.0, 2.0], "B": [3.0, 4.0]}, names)[0]["id"] == "a"
    with pytest.raises(SystemExit):
        match_positions({"A": [1.0, 2.0], "D": [3.0, 4.0]}, names)
    told = capsys.readouterr().err
    assert "no receiver 'B'" in told and "it has 'A', 'D'" in told


def test_positions_are_matched_by_station_or_by_the_name_of_a_file_without_one():
    names = ["20200813T065220Z_77500_HB9_ODP_iq.wav", "rec/20200813T065220Z_77500_iq.wav"]
    positions = {"HB9_ODP": {"lat": 47.0, "lon": 8.0}, "20200813T065220Z_77500_iq": [45.0, 9.0]}
    receivers = match_positions(positions, names)
    assert receivers == [
        {"id": "HB9_ODP", "lat": 47.0, "lon": 8.0},
        {"id": "20200813T065220Z_77500_iq", "lat": 45.0, "lon": 9.0},
    ]


def test_the_tdoa_demo_refuses_an_output_it_cannot_write_before_starting_anything(tmp_path, capsys):
    """``tdoa demo --out`` a file, or a folder it cannot make, was a traceback after the demo had
    started a worker and a shim."""
    from inference_worker.cli.tdoa_demo import run_demo
    from inference_worker.settings import load_settings

    a_file = tmp_path / "a-file"
    a_file.write_text("")
    assert run_demo(load_settings(), 1, 1, a_file) == 2
    assert (
        capsys.readouterr().err
        == f"error: cannot write the sets to {a_file}/: it is not a folder\n"
    )
    assert run_demo(load_settings(), 1, 1, a_file / "under") == 2
    assert capsys.readouterr().err.endswith("under/: Not a directory\n")


def test_tdoa_submit_names_a_positions_file_or_a_recording_it_cannot_read(tmp_path, capsys):
    """Positions nested past the JSON parser's depth were a RecursionError traceback; a folder
    given as a recording was "no such file". Both are refused before anything is sent."""
    from inference_worker.cli.main import main

    wavs = [tmp_path / f"20261130T120000Z_77500_RX{k}_iq.wav" for k in (1, 2, 3)]
    for wav in wavs:
        wav.write_bytes(b"RIFF")
    deep = tmp_path / "receivers.json"
    deep.write_text("[" * 100_000)
    for files, refusal in (
        (wavs, f"error: cannot read the positions file {deep}: nested too deeply\n"),
        ([tmp_path] * 3, f"error: not a file: {tmp_path}\n"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(["tdoa", "submit", *map(str, files), "--receivers", str(deep)])
        assert exit_.value.code == 2
        assert capsys.readouterr().err == refusal


def test_submit_refuses_a_raw_file_of_no_whole_values_or_one_it_cannot_read(tmp_path, capsys):
    """``--raw`` dropped a trailing part of a value without a word (``np.fromfile``), and a file
    it could not read was a traceback (the ``.npy`` form said so already)."""
    from inference_worker.cli.main import main

    ragged = tmp_path / "ragged.c64"
    ragged.write_bytes(np.ones((3, 1000), "<c8").tobytes() + b"tail")
    fields = ["--sample-rate", "12000", "--frequency-mhz", "145", "--receivers", "a,b,c"]
    for path, refusal in (
        (ragged, f"{ragged} holds 24004 bytes, not a whole number of complex64 values (8 bytes"),
        (tmp_path, f"cannot read {tmp_path}: [Errno 21] Is a directory"),
        (tmp_path / "none", f"cannot read {tmp_path / 'none'}: [Errno 2] No such file"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(["submit", str(path), "--raw", *fields])
        assert exit_.value.code == 2
        assert capsys.readouterr().err.startswith(f"error: {refusal}")
