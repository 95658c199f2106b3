"""Deployment files users run as they are: the image, the compose file and the alerting rules."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _tool_or_skip(*candidates: list[str]) -> list[str]:
    """The first command that runs (each is probed with its ``version`` subcommand or flag)."""
    for command in candidates:
        probe = [*command, "version"] if command[0] == "docker" else [*command, "--version"]
        if shutil.which(command[0]) and subprocess.run(probe, capture_output=True).returncode == 0:
            return command
    if os.environ.get("CI"):
        pytest.fail(f"none of {[' '.join(c) for c in candidates]} installed; .ci/run installs them")
    pytest.skip(f"none of {[' '.join(c) for c in candidates]} installed")


def test_compose_file_is_valid():
    compose = _tool_or_skip(["docker", "compose"], ["docker-compose"])
    done = subprocess.run(
        [*compose, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


def test_compose_runs_every_part_of_the_service():
    text = (ROOT / "docker-compose.yml").read_text()
    for service in (
        "rabbitmq:",
        "redis:",
        "postgres:",
        "worker:",
        "api:",
        "flower:",
        "prometheus:",
        "mlflow:",
    ):
        assert f"\n  {service}" in text
    assert "noeviction" in text  # waiting captures are never evicted


def test_compose_starts_each_service_again_when_it_dies():
    """A killed worker or shim loses no accepted job, but only a restart policy brings it back
    (and one started before its stores answer exits at once, naming the store)."""
    text = (ROOT / "docker-compose.yml").read_text()
    services = text.split("\nservices:\n")[1].split("\nvolumes:\n")[0]
    blocks = dict(re.findall(r"^  ([\w-]+):\n((?:(?:    .*)?\n)*)", services, re.MULTILINE))
    assert {"worker", "api"} <= blocks.keys()
    for name, block in blocks.items():
        assert "\n    restart: unless-stopped\n" in block, f"{name} has no restart policy"


def promtool(*args: str) -> str:
    """Run ``promtool ARGS`` on the deployment's files; its output, which must say SUCCESS."""
    command = _tool_or_skip(["promtool"])
    done = subprocess.run([*command, *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
    return done.stdout


def test_alerting_rules_pass_promtool():
    promtool("check", "rules", str(ROOT / "config/prometheus/alerts.yml"))


def test_alerting_rules_fire_as_their_tests_expect():
    """``config/prometheus/alerts_test.yml``: series in, alerts out, as promtool evaluates them."""
    promtool("test", "rules", str(ROOT / "config/prometheus/alerts_test.yml"))


def test_image_installs_from_what_the_dockerfile_copies(tmp_path):
    """The image's ``pip install .`` sees only the files the Dockerfile copies: a wheel built
    from those alone carries the licence, the packaged models, the migrations and the API's
    document, and every module of the three packages (a file the build or the service reads,
    left out of a ``COPY``, fails here)."""
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    install = next(i for i, line in enumerate(lines) if line.startswith("RUN pip install"))
    context = tmp_path / "app"
    context.mkdir()
    for line in lines[:install]:
        if line.startswith("COPY "):
            *sources, target = line.split()[1:]
            for source in sources:
                path = ROOT / source
                into = context / (path.name if target.endswith("/") else target.rstrip("/"))
                if path.is_dir():
                    shutil.copytree(path, into, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy2(path, into)
    out = tmp_path / "dist"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import setuptools.build_meta as b; print(b.build_wheel({str(out)!r}))",
        ],
        cwd=context,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    with zipfile.ZipFile(out / done.stdout.split()[-1]) as wheel:
        names = set(wheel.namelist())
    modules = [
        path.relative_to(ROOT).as_posix()
        for package in ("inference_worker", "api_shim", "tasks")
        for path in (ROOT / package).rglob("*.py")
    ]
    assert [name for name in modules if name not in names] == []
    wanted = [
        "inference_worker/models/reference/model.onnx",
        "inference_worker/models/reference/model.json",
        "inference_worker/data/receivers.json",
        "inference_worker/storage/migrations/env.py",
        "inference_worker/storage/migrations/script.py.mako",
        "inference_worker/storage/migrations/versions/0001_jobs_models_logs.py",
        "api_shim/openapi.json",
    ]
    assert [name for name in wanted if name not in names] == []
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)


UNITS = ROOT / "config/systemd"


def unit(name: str) -> dict[str, str]:
    """A systemd unit file's settings as ``Section.Key`` → value (comments left out)."""
    settings, section = {}, ""
    for line in (UNITS / name).read_text().splitlines():
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings[f"{section}.{key.strip()}"] = value.strip()
    return settings


def test_systemd_units_pass_systemd_analyze(tmp_path):
    """The units as systemd reads them, with this environment's ``heimdall-inference`` where
    they name /opt/heimdall's: no unknown key, no value it ignores, every command there."""
    command = _tool_or_skip(["systemd-analyze"])
    ours = str(Path(sys.executable).parent / "heimdall-inference")
    for path in UNITS.iterdir():
        text = path.read_text().replace("/opt/heimdall/.venv/bin/heimdall-inference", ours)
        (tmp_path / path.name).write_text(text)
    done = subprocess.run(
        [*command, "verify", *sorted(str(path) for path in tmp_path.iterdir())],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    said = [line for line in (done.stdout + done.stderr).splitlines() if "heimdall" in line]
    assert done.returncode == 0 and said == [], done.stdout + done.stderr


def test_systemd_units_run_the_service_as_the_readme_says():
    """Each process started again when it dies, stopped at its main process (the pool's jobs
    finished, not killed), given longer to stop than it takes; the socket on the shim's default
    address with gunicorn's backlog."""
    from api_shim.starting import BACKLOG
    from inference_worker.settings import Settings

    host, port = (Settings.model_fields[name].default for name in ("api_host", "api_port"))
    socket_unit = unit("heimdall-api.socket")
    assert socket_unit["Socket.ListenStream"] == f"{host}:{port}"
    assert socket_unit["Socket.Backlog"] == str(BACKLOG)
    commands = {}
    for name in ("heimdall-worker.service", "heimdall-api.service", "heimdall-flower.service"):
        service = unit(name)
        assert service["Service.Restart"] == "always" and service["Service.RestartSec"] == "2"
        assert service["Service.WorkingDirectory"] == "/opt/heimdall", name
        program, command = service["Service.ExecStart"].split()
        assert program == "/opt/heimdall/.venv/bin/heimdall-inference", name
        commands[command] = service
    assert commands.keys() == {"worker", "api", "flower"}
    for command, longest_stop_s in (("worker", 60), ("api", 30)):  # compose's grace; gunicorn's
        assert commands[command]["Service.KillMode"] == "mixed", command
        assert int(commands[command]["Service.TimeoutStopSec"]) >= longest_stop_s, command
    assert unit("heimdall-api.service")["Unit.Requires"] == "heimdall-api.socket"
