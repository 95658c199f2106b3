"""The pure parts of ``heimdall-inference check``: what a Redis's configuration loses, what this
host's settings expose, and the command's exit codes and output."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from inference_worker.cli import check
from inference_worker.serving import deployment_check
from inference_worker.serving.deployment_check import Finding, check_host
from inference_worker.settings import load_settings
from inference_worker.storage.reachability import persistence_warning


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"appendonly": "yes", "save": ""}, None),
        ({"appendonly": "yes", "save": "3600 1"}, None),
        ({"appendonly": "no", "save": "3600 1 300 100"}, "keeps only snapshots (save 3600 1 300"),
        ({"appendonly": "no", "save": ""}, "keeps nothing on disk"),
        ({}, "keeps nothing on disk"),
    ],
)
def test_what_a_redis_loses_when_it_stops(
    config: dict[str | None, str | None], words: str | None
) -> None:
    warning = persistence_warning(config)
    assert (warning is None) if words is None else (warning is not None and words in warning)


def test_an_open_api_on_every_address_is_named(tmp_path: Path) -> None:
    for loopback in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert [
            f.level for f in check_host(load_settings(data_dir=tmp_path, api_host=loopback))
        ] == ["ok"], loopback
    exposed = check_host(load_settings(data_dir=tmp_path, api_host="0.0.0.0"))
    assert [(f.level, "without keys (HEIMDALL_API_KEYS)" in f.message) for f in exposed] == [
        ("warn", True)
    ]
    # a data folder not made yet is judged by the folder it would be made in
    assert [f.level for f in check_host(load_settings(data_dir=tmp_path / "a" / "b"))] == ["ok"]


def test_the_registry_copies_kept_are_counted_and_named_when_the_disk_runs_low(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for version in ("1", "2"):
        copy = tmp_path / "model-cache" / "heimdall-localization" / version / "model"
        copy.mkdir(parents=True)
        (copy / "model.onnx").write_bytes(b"x" * 1_500_000)
    (tmp_path / "model-cache" / "heimdall-localization" / ".3-cut").mkdir()  # not a copy
    settings = load_settings(data_dir=tmp_path)
    [found] = check_host(settings)
    assert found.message.endswith("; 2 registry copies kept (3.0 MB)"), found.message
    monkeypatch.setattr("inference_worker.serving.deployment_check.LOW_DISK_BYTES", 2**62)
    [low] = check_host(settings)
    assert low.level == "warn" and "`heimdall-inference models prune-cache`" in low.message


@pytest.mark.parametrize(
    ("levels", "strict", "code"),
    [
        (["ok", "ok"], False, 0),
        (["ok", "warn"], False, 0),
        (["ok", "warn"], True, 1),
        (["fail", "ok"], False, 1),
    ],
)
def test_exit_code_and_output(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    levels: list[str],
    strict: bool,
    code: int,
) -> None:
    findings = [Finding(f"area{n}", level, f"said {n}") for n, level in enumerate(levels)]  # type: ignore[arg-type]
    monkeypatch.setattr(deployment_check, "check_deployment", lambda settings, skip: findings)
    for as_json in (False, True):
        args = argparse.Namespace(json=as_json, strict=strict, skip=[])
        if code:
            with pytest.raises(SystemExit) as exited:
                check.cmd_check(load_settings(), args)
            assert exited.value.code == code
        else:
            check.cmd_check(load_settings(), args)
        out, err = capsys.readouterr()
        if as_json:
            body = json.loads(out)
            assert body["ok"] is (code == 0)
            assert body["findings"][1] == {"area": "area1", "level": levels[1], "message": "said 1"}
        else:
            word = {"ok": "ok   ", "warn": "warn ", "fail": "FAIL "}[levels[0]]
            assert out.splitlines()[0] == f"{word} area0      said 0"
            assert err.startswith(f"check: {levels.count('ok')} ok,")


def test_the_connections_a_hosts_settings_keep_are_weighed_against_what_the_server_leaves(
    tmp_path: Path,
) -> None:
    """Each shim process keeps threads + 1 connections, each worker pool process 2 and a
    worker's main process 2: six shim processes of 16 threads keep more than a default
    PostgreSQL (100, 3 reserved) leaves once other clients hold a few."""
    from inference_worker.serving.store_checks import _connection_findings
    from inference_worker.storage.engine import ConnectionUse, connection_need

    defaults = load_settings(data_dir=tmp_path)
    assert connection_need(defaults).total == 2 * 17 + 2 + 2 * 2 == 40
    use = ConnectionUse(open=12, allowed=97, ours=4)  # 8 held by other clients: 89 left
    assert _connection_findings(use, defaults) == []
    six = load_settings(data_dir=tmp_path, api_workers=6)
    [finding] = _connection_findings(use, six)
    assert finding.level == "warn"
    assert "keep up to 108 connections" in finding.message
    assert "the shim's 6 × 17" in finding.message and "the worker's 2 + 2 × 2" in finding.message
    assert "more than the 89 the server leaves them (it allows 97, other clients hold 8)" in (
        finding.message
    )
    fitting = load_settings(data_dir=tmp_path, api_workers=5, worker_concurrency=3)
    assert connection_need(fitting).total == 5 * 17 + 2 + 3 * 2 == 93
    assert [f.level for f in _connection_findings(use, fitting)] == ["warn"]
    assert _connection_findings(ConnectionUse(open=4, allowed=97, ours=4), fitting) == []
