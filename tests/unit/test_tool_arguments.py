"""The training, evaluation and benchmark tools refuse numbers they cannot use before any work,
naming the argument and its range: each was a traceback from PyTorch or numpy, some after
minutes of simulating captures (``--epochs 0``, ``--batch 0``, a negative seed), or a benchmark
that ran with another number than the one given (``--processes 0``) or ran nothing (a misspelt
stage)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("tool", "args", "refusal"),
    [
        ("train_reference_model", ["--epochs", "0"], "argument --epochs: 0 is too few"),
        ("train_reference_model", ["--lr", "nan"], "argument --lr: nan is out of range"),
        ("evaluate_model", ["--per-condition", "0"], "argument --per-condition: 0 is too few"),
        ("recalibrate_model", ["--count", "0"], "argument --count: 0 is too few"),
        ("evaluate_tdoa", ["--seed", "-1"], "argument --seed: -1 is too few"),
        ("simulate_known_captures", ["--duration", "0"], "argument --duration: 0 is out of"),
        (
            "simulate_known_captures",
            ["--rate", "1000", "--duration", "0.1"],
            "make 100 samples: the service takes 512 to 480000 a receiver",
        ),
        ("bench_throughput", ["--jobs", "0"], "argument --jobs: 0 is too few: give at least 10"),
        ("bench_throughput", ["--stages", "bare,serivce"], "unknown --stages serivce; known:"),
        ("bench_throughput", ["--processes", "0"], "argument --processes: 0 is too few"),
        ("bench_submit", ["--duration", "-1"], "argument --duration: -1 is out of range"),
        ("bench_submit", ["--rate", "192000", "--duration", "5"], "make 960000 samples"),
        ("bench_tdoa", ["--seconds", "0"], "argument --seconds: 0 is out of range"),
        ("bench_tdoa", ["--rates", "0"], "argument --rates: 0 is too few"),
        ("load_test_inference", ["--clients", "0"], "argument --clients: 0 is too few"),
        ("load_test_inference", ["--duplicates", "2"], "argument --duplicates: 2 is out of"),
        ("chaos_soak", ["--clients", "0"], "argument --clients: 0 is too few"),
        ("chaos_soak", ["--faults", "kill-everything"], "unknown --faults kill-everything; known:"),
    ],
)
def test_a_tool_refuses_a_number_it_cannot_use_before_it_starts(
    tool, args, refusal, tmp_path, model_dir
):
    if tool == "train_reference_model":
        pytest.importorskip("torch", reason="the train extra is not installed")
    # Everything a tool would write goes under tmp_path, should one take the number after all:
    # by default the model tools rewrite the packaged model.
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    where = {
        "train_reference_model": ["--out", str(tmp_path / "out")],
        "simulate_known_captures": ["--out", str(tmp_path / "out")],
        "recalibrate_model": ["--model", str(model)],
        "evaluate_model": ["--model", str(model), "--report", str(tmp_path / "out"), "--no-record"],
    }.get(tool, [])
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / f"{tool}.py"), *args, *where],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert refusal in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()
