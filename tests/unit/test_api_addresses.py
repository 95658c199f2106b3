"""The addresses an api is asked at and beats from, as ``heimdall-inference check`` builds them."""

from __future__ import annotations

import pytest

from inference_worker.serving.api_check import loopback
from inference_worker.urls import base_url, host_port


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("0.0.0.0", "http://vm:8000"),  # listening everywhere: reached by the name given
        ("", "http://vm:8000"),
        ("::", "http://vm:8000"),
        ("10.1.2.3", "http://10.1.2.3:8000"),
        ("fd00::5", "http://[fd00::5]:8000"),
        ("[fd00::5]", "http://[fd00::5]:8000"),
        ("api.example.org", "http://api.example.org:8000"),
    ],
)
def test_an_api_is_reached_at_the_address_it_listens_on(host: str, expected: str) -> None:
    assert base_url(host, 8000, wildcard_as="vm") == expected


@pytest.mark.parametrize(
    ("host", "only_here"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.0.1.1", True),
        ("::1", True),
        ("[::1]", True),
        ("10.1.2.3", False),
        ("vm", False),
        ("0.0.0.0", False),
    ],
)
def test_loopback_addresses_reach_only_their_own_host(host: str, only_here: bool) -> None:
    assert loopback(host) is only_here


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("::1", "[::1]:8003"),  # "::1:8003" is read as no port (gunicorn, urllib3)
        ("[::1]", "[::1]:8003"),
        ("127.0.0.1", "127.0.0.1:8003"),
        ("api.example.org", "api.example.org:8003"),
    ],
)
def test_a_host_and_port_are_written_with_an_ipv6_address_in_brackets(host, expected):
    assert host_port(host, 8003) == expected
    assert base_url(host, 8003) == f"http://{expected}"
    assert base_url("0.0.0.0", 8003) == "http://127.0.0.1:8003"  # reached from its own host


def test_a_shim_handed_a_socket_off_its_settings_port_says_so(caplog, monkeypatch) -> None:
    """A socket systemd or a former master hands over is served as it is; one on another port
    than the settings name is named in a warning (``check`` looks for the shim there)."""
    import os
    import socket

    from inference_worker.cli.bootstrap import handed_listeners, warn_other_address

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        monkeypatch.setenv("GUNICORN_PID", str(os.getpid()))
        monkeypatch.setenv("GUNICORN_FD", str(listening.fileno()))
        assert handed_listeners() == [listening.fileno()]
        warn_other_address([listening.fileno()], "127.0.0.1", port)
        assert not caplog.records
        warn_other_address([listening.fileno()], "127.0.0.1", port + 1)
        assert f"serves on {port}" in caplog.text and listening.fileno() != -1  # still open
