"""A database whose host dies mid-statement, on a link of the test's own: the client runs in a
network namespace joined to this one by a veth pair, and taking the link down makes every packet
vanish, as a dead host's or a broken network's do (no reset, no answer, nothing acknowledged).

With Linux's defaults a statement sent then waited ~15 min of retransmissions (the server's
statement timeout is the server's to enforce); with the service's dead-peer settings
(``storage.dead_peers``: ``tcp_user_timeout`` 10 s) the kernel gives up on the connection and
the statement fails. The test's statement timeout is long (10 min) so that the wait the service
puts on a silent server (``storage.database_silence``) cannot be what ends it.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from tools.silent_relay import SilentProxy

ROOT = Path(__file__).resolve().parents[2]
CLIENT = """
import sys, time
import sqlalchemy as sa
from inference_worker.storage.engine import create_engine
engine = create_engine(sys.argv[1], sys.argv[2], statement_timeout_s=600.0)
with engine.connect() as connection:
    connection.execute(sa.text("SELECT 1"))
print("ready", flush=True)
sys.stdin.readline()  # the link is down
started = time.monotonic()
try:
    with engine.connect() as connection:  # the pooled connection, over the dead link
        connection.execute(sa.text("SELECT 1"))
    print("answered", flush=True)
except sa.exc.OperationalError as exc:
    reason = str(exc.orig).strip().splitlines()[0]
    print(f"failed after {time.monotonic() - started:.1f} s: {reason}", flush=True)
"""


@dataclass
class Link:
    namespace: str
    host_side: str
    address: str  # this side's address, as the namespace reaches it

    def cut(self) -> None:
        subprocess.run(["ip", "link", "set", self.host_side, "down"], check=True)


@contextmanager
def namespace_link() -> Iterator[Link]:
    """A network namespace of the test's own and a veth pair to it (removed afterwards)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:  # a laptop skips; CI must have it
        (pytest.fail if os.environ.get("CI") else pytest.skip)("needs root and iproute2")
    tag = uuid.uuid4().hex[:6]
    namespace, host_side, far_side = f"hd{tag}", f"hd{tag}a", f"hd{tag}b"
    net = f"10.231.{random.randrange(256)}"
    steps = [
        ["ip", "netns", "add", namespace],
        ["ip", "link", "add", host_side, "type", "veth", "peer", "name", far_side],
        ["ip", "link", "set", far_side, "netns", namespace],
        ["ip", "addr", "add", f"{net}.1/30", "dev", host_side],
        ["ip", "link", "set", host_side, "up"],
        ["ip", "-n", namespace, "addr", "add", f"{net}.2/30", "dev", far_side],
        ["ip", "-n", namespace, "link", "set", far_side, "up"],
        ["ip", "-n", namespace, "link", "set", "lo", "up"],
    ]
    try:
        for step in steps:
            made = subprocess.run(step, capture_output=True, text=True)
            if made.returncode != 0:
                (pytest.fail if os.environ.get("CI") else pytest.skip)(
                    f"cannot make a network namespace: {' '.join(step)}: {made.stderr.strip()}"
                )
        yield Link(namespace, host_side, f"{net}.1")
    finally:
        subprocess.run(["ip", "link", "del", host_side], capture_output=True)
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


@pytest.mark.timeout(90, method="thread")  # Linux's defaults: ~15 min
def test_a_statement_to_a_database_whose_host_died_fails_within_seconds(settings, engine):
    url = sa.engine.make_url(settings.database_url)
    with namespace_link() as link:
        relay = SilentProxy(url.host or "127.0.0.1", url.port or 5432, listen_on=link.address)
        through = url.set(host=link.address, port=relay.port).render_as_string(False)
        command = ["ip", "netns", "exec", link.namespace, sys.executable, "-c", CLIENT]
        client = subprocess.Popen(
            [*command, through, settings.database_schema],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            assert client.stdout is not None and client.stdin is not None
            assert client.stdout.readline().strip() == "ready"
            link.cut()
            client.stdin.write("go\n")
            client.stdin.flush()
            said = client.stdout.readline().strip()
            assert client.wait(30) == 0
        finally:
            client.kill()
            client.communicate()
            relay.close()
    assert said.startswith("failed after "), said
    # the kernel gave the connection up (its last error: the host unreachable, or timed out),
    # not a wait of the service's
    assert "could not receive data from server" in said, said
