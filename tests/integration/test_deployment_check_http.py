"""``heimdall-inference check`` over HTTP: the api this host's settings describe, as it answers
and as it sees the stores, and an MLflow server that answers ``/health`` but hangs on its API."""

from __future__ import annotations

import hashlib
import json
import socket
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis

from inference_worker.api_keys import ApiKey
from inference_worker.cli.processes import cli_process, managed_process, wait_until
from inference_worker.serving.deployment_check import check_api
from inference_worker.settings import Settings
from inference_worker.storage.redis_store import RedisStore, connect
from tests.integration.helpers import free_port, in_area, private_redis, run_check, worker_env


@contextmanager
def http_server(port: int, hang: threading.Event | None = None) -> Iterator[str]:
    """A plain HTTP server on ``port`` (0: any) that answers ``/health`` with 200 ``OK``; with
    ``hang``, every other path waits for it to be set (a stuck MLflow server). Its URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if hang is not None and not self.path.startswith("/health"):
                hang.wait(60)
                return
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")

        do_POST = do_GET

        def log_message(self, *_: object) -> None:
            pass

    with ThreadingHTTPServer(("127.0.0.1", port), Handler) as server:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield f"http://127.0.0.1:{server.server_port}"
        finally:
            if hang is not None:
                hang.set()
            server.shutdown()


def test_an_mlflow_server_that_hangs_gets_one_short_wait(settings: Settings, tmp_path: Path):
    """A server that answers ``/health`` but never its API (a stuck one): the check gives it
    one 3 s read, not MLflow's retries of 10 s each, and says it does not answer."""
    with http_server(0, hang=threading.Event()) as uri:
        local = settings.model_copy(
            update={"model_source": "registry", "registry_uri": uri, "data_dir": tmp_path}
        )
        [(level, message)] = in_area(run_check(local), "model")
    assert level == "fail" and message.startswith(f"the model registry at {uri} does not answer")
    assert "read timeout=3)" in message and message.endswith("this host holds no copy to serve")


def test_the_api_on_this_host_says_how_it_sees_the_deployment(
    settings: Settings, tmp_path: Path
) -> None:
    """None listening, something else listening, the api serving, the api without its Redis."""
    port = free_port()
    local = settings.model_copy(update={"api_port": port, "api_host": "0.0.0.0"})
    url = f"http://127.0.0.1:{port}/health"
    [(level, message)] = in_area(check_api(local), "api")
    assert level == "warn" and message.startswith(f"no api answers at {url} (")

    with http_server(port):  # something else listens there
        assert in_area(check_api(local), "api") == [
            ("warn", f"{url} answers 200, but not as this service's api")
        ]

    key = "check-" + uuid.uuid4().hex  # the shim shows why it is unhealthy to a key only
    keys = json.dumps([{"name": "ops", "key": key, "role": "admin"}])
    with_key = local.model_copy(update={"api_keys": [ApiKey(name="ops", key=key)]})
    digest = hashlib.sha256(key.encode()).hexdigest()
    hashed = local.model_copy(update={"api_keys": [ApiKey(name="ops", key_sha256=digest)]})
    with private_redis(tmp_path / "redis") as redis_url:
        shim = local.model_copy(update={"redis_url": redis_url, "api_host": "127.0.0.1"})
        api = ["api", "--port", str(port), "--workers", "1"]
        env = {**worker_env(shim), "HEIMDALL_API_KEYS": keys}
        with cli_process(api, tmp_path / "api.log", env) as process:
            wait_until(
                "the api", lambda: "answers degraded" in check_api(local)[-1].message, 60, process
            )
            [(level, message)] = in_area(check_api(with_key), "api")  # no worker beats in its Redis
            assert (level, message) == (
                "warn",
                f"{url} answers degraded (model: no worker is serving this queue)",
            )
            assert in_area(check_api(hashed), "api") == [
                (
                    "warn",
                    f"{url} answers degraded (its reasons are shown to a caller with a key: set "
                    "HEIMDALL_ADMIN_TOKEN)",
                )
            ]
            redis.Redis.from_url(redis_url).shutdown(nosave=True)
            [(level, message)] = in_area(check_api(with_key), "api")
            assert level == "fail" and message.startswith(f"{url} answers unavailable (redis: ")


def test_the_check_asks_every_api_that_beats(settings: Settings, tmp_path: Path) -> None:
    """Each api process beats in Redis while it serves, and is forgotten when it stops; the
    check names the hosts the apis run on and asks each address another host's api beats from,
    except its loopback; a host without an api of its own is then no warning."""
    here, port = socket.gethostname(), free_port()
    with private_redis(tmp_path / "redis") as redis_url:
        shim = settings.model_copy(
            update={"redis_url": redis_url, "api_host": "0.0.0.0", "api_port": port}
        )
        store = RedisStore(connect(redis_url), shim.redis_prefix)
        gone = free_port()  # nothing listens there
        for host, url in (
            ("elsewhere-a", f"http://{here}:{port}"),  # reaches the api below, by this host's name
            ("elsewhere-b", "http://127.0.0.1:1"),
            ("elsewhere-c", f"http://{here}:{gone}"),
        ):
            info = {"api_id": f"{host}:1", "host": host, "url": url, "queue": shim.queue}
            store.api_heartbeat(info["api_id"], info, ttl_s=300)
        api = ["api", "--workers", "2"]
        with cli_process(api, tmp_path / "api.log", worker_env(shim)) as process:
            wait_until("the api's beats", lambda: len(store.apis()) == 5, 60, process)
            assert {a["url"] for a in store.apis() if a["host"] == here} == {
                f"http://{here}:{port}"
            }
            findings = in_area(check_api(shim), "api")
            elsewhere = shim.model_copy(update={"api_port": gone})  # this host runs none there
            without_one = in_area(check_api(elsewhere), "api")
        wait_until("the api forgotten", lambda: len(store.apis()) == 3, 30)
        store.client.close()
    degraded = "answers degraded (model: no worker is serving this queue)"
    assert findings == [
        (
            "ok",
            f"5 api process(es) on elsewhere-a, elsewhere-b, elsewhere-c, {here} serve queue "
            f"{shim.queue!r}",
        ),
        ("warn", f"http://127.0.0.1:{port}/health {degraded}"),
        ("warn", f"http://{here}:{port}/health {degraded}"),
        ("ok", "http://127.0.0.1:1 (on elsewhere-b) listens on its loopback: not asked"),
        findings[4],
    ]
    level, message = findings[4]
    assert level == "warn" and message.startswith(
        f"http://{here}:{gone}/health, where an api on elsewhere-c beats from, does not answer"
    )
    level, message = without_one[1]
    assert level == "ok" and message.startswith(f"no api answers at http://127.0.0.1:{gone}/")
    assert message.endswith("the apis run on elsewhere-a, elsewhere-b, elsewhere-c")
    assert f"http://{here}:{port}/health {degraded}" in [m for _, m in without_one]


def test_a_redis_that_refuses_to_list_heartbeats_leaves_the_api_asked(
    settings: Settings, tmp_path: Path
) -> None:
    """An ACL that denies SCAN (the heartbeats cannot be listed) is the ``redis`` area's to
    tell: the api area still asks this host's api, and fails for nothing else."""
    port = free_port()
    refusing = ("--user", "default", "on", "nopass", "~*", "&*", "+@all", "-scan")
    with private_redis(tmp_path / "redis", *refusing) as redis_url:
        with pytest.raises(redis.exceptions.NoPermissionError):
            redis.Redis.from_url(redis_url).scan()
        local = settings.model_copy(update={"redis_url": redis_url, "api_port": port})
        [(level, message)] = in_area(check_api(local), "api")
    assert level == "warn" and message.startswith(f"no api answers at http://127.0.0.1:{port}/")


def test_a_shim_under_the_containers_gunicorn_config_beats_its_public_address(
    settings: Settings, tmp_path: Path
) -> None:
    """``gunicorn -c config/gunicorn.conf.py api_shim.wsgi:app`` (the containers' way) beats as
    ``heimdall-inference api`` does, announcing ``HEIMDALL_API_PUBLIC_URL`` (behind a proxy or
    NAT the address it listens on is not the one other hosts reach); gone once it stops."""
    port, public = free_port(), "https://heimdall.example.org/api"
    with private_redis(tmp_path / "redis") as redis_url:
        shim = settings.model_copy(
            update={"redis_url": redis_url, "api_port": port, "api_public_url": public}
        )
        store = RedisStore(connect(redis_url), shim.redis_prefix)
        config = Path(__file__).parents[2] / "config" / "gunicorn.conf.py"
        command = [sys.executable, "-m", "gunicorn", "-c", str(config), "api_shim.wsgi:app"]
        env = {**worker_env(shim), "HEIMDALL_API_WORKERS": "1"}
        with managed_process(command, tmp_path / "gunicorn.log", env) as process:
            wait_until("the shim's beat", lambda: bool(store.apis()), 60, process)
            [beat] = store.apis()
        wait_until("its beat forgotten", lambda: not store.apis(), 30)
        store.client.close()
    assert (beat["url"], beat["host"], beat["queue"]) == (public, socket.gethostname(), shim.queue)
    assert beat["model_version"] == "2.1.0"
