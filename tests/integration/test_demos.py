"""The two demos a new user runs first, as they run them: each starts a shim and a worker of its
own (none answers on its port or serves its queue), locates what it simulated, prints it and
stops what it started."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys

from tests.integration.helpers import free_port, worker_env


def run_cli(local, tmp_path, *args: str, **more: str) -> subprocess.CompletedProcess[str]:
    env = {
        **worker_env(local),
        "HEIMDALL_API_PORT": str(free_port()),  # nothing answers there: the demo starts a shim
        "HEIMDALL_WORKER_METRICS_PORT": str(free_port()),
        **more,
    }
    env.pop("HEIMDALL_API_KEY", None)  # the demo finds a key in this host's settings
    return subprocess.run(
        [sys.executable, "-m", "inference_worker.cli", *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_demo_locates_simulated_captures_and_answers_the_repeat_from_the_cache(
    own_queue, tmp_path
):
    local, _, _ = own_queue
    # The logs' former fixed names, taken (by another user's run, say): the demo's own go
    # into a folder of this run's.
    temporary = tmp_path / "tmp"
    for taken in ("heimdall-demo-api.log", "heimdall-demo-worker.log"):
        (temporary / taken).mkdir(parents=True)
    done = run_cli(local, tmp_path, "demo", "--captures", "2", "--seed", "7", TMPDIR=str(temporary))

    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    [logs] = [p for p in temporary.glob("heimdall-demo-*") if not p.name.endswith(".log")]
    assert {p.name for p in logs.iterdir()} == {"api.log", "worker.log"}
    assert logs.stat().st_mode & 0o077 == 0  # private to the user who ran it
    assert "starting the HTTP shim" in out and "starting a worker" in out
    assert "simulating 2 captures with seed 7" in out
    assert out.count("succeeded") >= 3  # two captures and the repeat of the first
    assert "stopping a worker" in out and "stopping the HTTP shim" in out


def test_the_demo_on_a_host_whose_shim_takes_keys_calls_it_with_one_of_them(own_queue, tmp_path):
    """With ``HEIMDALL_API_KEYS`` set the demo's shim showed its checks to a caller with a key
    only, and the demo, sending none, ended in ``KeyError: 'checks'``."""
    local, _, _ = own_queue
    key = "demo-key-0123456789"
    plain = json.dumps([{"name": "demo", "key": key}])
    done = run_cli(local, tmp_path, "demo", "--captures", "1", HEIMDALL_API_KEYS=plain)

    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("succeeded") >= 2  # the capture and its repeat

    hashed = json.dumps([{"name": "demo", "key_sha256": hashlib.sha256(key.encode()).hexdigest()}])
    done = run_cli(local, tmp_path, "demo", "--captures", "1", HEIMDALL_API_KEYS=hashed)

    assert done.returncode == 1, done.stdout + done.stderr
    assert "not its checks: it shows them to a caller with a key: set HEIMDALL_API_KEY" in (
        done.stderr
    )
    assert "Traceback" not in done.stderr


def test_the_tdoa_demo_writes_its_sets_locates_them_and_draws_their_maps(own_queue, tmp_path):
    local, _, _ = own_queue
    # Three receivers whose hyperbolas cross twice, the higher peak 205 km from the emitter.
    args = ["tdoa", "demo", "--sets", "1", "--seed", "75218"]
    done = run_cli(local, tmp_path, *args, "--expect-emitter", "among_receivers")

    assert done.returncode == 0, done.stdout + done.stderr
    folder = tmp_path / "tdoa-demo" / "set-75218"
    assert len(list(folder.glob("*_iq.wav"))) == 3
    truth = json.loads((folder / "truth.json").read_text())
    assert {"lat", "lon"} <= set(truth)
    for picture in ("map.png", "likelihood.png"):
        assert (folder / picture).read_bytes()[:4] == b"\x89PNG"
    row = next(line for line in done.stdout.splitlines() if line.startswith("set-75218"))
    assert " in " in row and re.search(r"\(ambiguous: weight 0\.\d\d\), taken among the", row)
    assert float(row.split()[6].rstrip("m")) < 2_000  # the error column
    assert "median error of these sets" in done.stdout


def test_the_tdoa_demo_prints_a_set_it_cannot_locate_as_the_service_answered_it(
    own_queue, tmp_path
):
    local, _, _ = own_queue
    # Three receivers nearly on one line, the emitter 198 km beyond its end: a line, no point.
    done = run_cli(local, tmp_path, "tdoa", "demo", "--sets", "1", "--seed", "91858")

    assert done.returncode == 0, done.stdout + done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith("set-91858"))
    assert "failed: the delays do not fix a position" in row
    assert "failed: the service's answer for a set it cannot locate" in done.stdout


def test_the_tdoa_demo_with_skywave_locates_its_sets_with_the_layer_it_heard_them_by(
    own_queue, tmp_path
):
    local, _, _ = own_queue
    args = ["tdoa", "demo", "--sets", "1", "--seed", "91858", "--propagation", "skywave"]
    done = run_cli(local, tmp_path, *args)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "synthetic sets heard by skywave" in done.stdout
    folder = tmp_path / "tdoa-demo" / "set-91858"
    assert "_10000000_" in next(folder.glob("*_iq.wav")).name  # tuned to HF
    simulated_km = json.loads((folder / "truth.json").read_text())["layer_height_km"]
    assert 250 <= simulated_km <= 350
    row = next(line for line in done.stdout.splitlines() if line.startswith("set-91858"))
    assert " in " in row, row
    layer = re.search(r"layer (\d+) ± (\d+) km \(simulated (\d+)\)", row)
    assert layer and int(layer[3]) == round(simulated_km), row
    assert abs(int(layer[1]) - simulated_km) < 3 * int(layer[2]), row
    assert float(row.split()[6].rstrip("m")) < 100_000  # 36 km (ground-wave: ~130)
