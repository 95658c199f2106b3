"""Deployment files users run as they are: the compose file and the alerting rules."""

from __future__ import annotations

import os
import shutil
import subprocess
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
