"""``heimdall-inference check`` against the real stores: what would lose accepted work or keep it
from being served is named, with what to do, and a sound deployment passes."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import kombu
import pytest
import redis
import sqlalchemy as sa

from inference_worker.cli.processes import cli_process, wait_until
from inference_worker.serving.deployment_check import (
    check_api,
    check_deployment,
    check_model,
    check_workers,
)
from inference_worker.serving.registry import serving_model_dir
from inference_worker.serving.store_checks import check_broker, check_database, check_redis
from inference_worker.settings import Settings
from inference_worker.storage.engine import known_revisions
from inference_worker.storage.redis_store import RedisStore
from tasks.app import dead_letter_queue_name, declare_queues
from tests.integration.helpers import (
    free_port,
    in_area,
    private_redis,
    refusing_settings,
    run_check,
    worker_env,
)


def test_a_served_deployment_passes(
    settings: Settings, worker: subprocess.Popen, tmp_path: Path
) -> None:
    local = settings.model_copy(update={"api_port": free_port()})
    api = ["api", "--port", str(local.api_port), "--workers", "1"]
    with cli_process(api, tmp_path / "api.log", worker_env(local)) as process:
        wait_until("the api", lambda: check_api(local)[-1].level == "ok", 60, process)
        findings = check_deployment(local)
    assert [f.level for f in findings if f.area != "redis"] == ["ok"] * 7, findings
    rabbitmq, postgresql, model, workers = (
        in_area(findings, area)[0][1] for area in ("rabbitmq", "postgresql", "model", "workers")
    )
    assert [message for _, message in in_area(findings, "api")] == [
        f"1 api process(es) on {socket.gethostname()} serve queue {settings.queue!r}",
        f"http://127.0.0.1:{local.api_port}/health answers: ok",
    ]
    assert f"queue {settings.queue!r}" in rabbitmq and "0 consumer" not in rabbitmq
    assert "guest:***@" in rabbitmq  # the password is never printed
    assert f"at migration {known_revisions()[-1]}" in postgresql
    assert "files intact" in model
    assert "1 worker process(es)" in workers and "champion model 2.1.0" in workers


@pytest.mark.parametrize(
    ("options", "level", "words"),
    [
        (("--appendonly", "yes"), "ok", "keeps each write and never evicts"),
        ((), "warn", "keeps nothing on disk (appendonly no, no snapshots)"),
        (("--save", "60 1"), "warn", "keeps only snapshots (save 60 1)"),
        (
            ("--appendonly", "yes", "--maxmemory-policy", "allkeys-lru"),
            "warn",
            "evicts keys when full (maxmemory-policy allkeys-lru)",
        ),
    ],
)
def test_redis_that_would_lose_captures_is_named(
    settings: Settings, tmp_path: Path, options: tuple[str, ...], level: str, words: str
) -> None:
    with private_redis(tmp_path / "redis", "--maxmemory", "64mb", *options) as url:
        findings = check_redis(settings.model_copy(update={"redis_url": url}))
    assert [(f.level, words in f.message) for f in findings] == [(level, True)], findings


def test_a_redis_without_maxmemory_is_named(settings: Settings, tmp_path: Path) -> None:
    """Without a bound Redis never refuses: a backlog grows until the kernel stops it."""
    with private_redis(tmp_path / "redis", "--appendonly", "yes") as url:
        findings = check_redis(settings.model_copy(update={"redis_url": url}))
    assert [f.level for f in findings] == ["warn"], findings
    assert "has no maxmemory: a backlog grows until the machine runs out" in findings[0].message


def test_a_nearly_full_redis_is_named(settings: Settings, tmp_path: Path) -> None:
    with private_redis(tmp_path / "redis", "--appendonly", "yes", "--maxmemory", "10mb") as url:
        client = redis.Redis.from_url(url)
        for n in range(80):  # 8 MB in values small enough for a full Redis's query buffer
            client.set(f"filler{n}", b"x" * 100_000)
        client.close()
        findings = check_redis(settings.model_copy(update={"redis_url": url}))
    assert len(findings) == 1 and findings[0].level == "warn", findings
    assert "of its maxmemory: when full, submissions are refused (503)" in findings[0].message


def test_queues_undeclared_of_other_arguments_and_dead_letters(settings: Settings) -> None:
    queue = f"{settings.queue}.chk{uuid.uuid4().hex[:6]}"
    local = settings.model_copy(update={"queue": queue, "max_deliveries": 5})
    [(level, message)] = in_area(check_broker(local), "rabbitmq")
    assert level == "warn" and "is not declared yet" in message
    with kombu.Connection(settings.broker_url) as connection:
        try:
            declare_queues(connection, queue, 3)
            [(level, message)] = in_area(check_broker(local), "rabbitmq")[1:]
            assert level == "fail" and "HEIMDALL_MAX_DELIVERIES=5" in message
            [(level, message)] = in_area(
                check_broker(local.model_copy(update={"max_deliveries": 3})), "rabbitmq"
            )
            assert level == "warn" and message.endswith("0 consumer(s): no worker takes its jobs")

            connection.default_channel.basic_publish(
                connection.default_channel.prepare_message(b"{}"),
                exchange="",
                routing_key=dead_letter_queue_name(queue),
            )
            checked = local.model_copy(update={"max_deliveries": 3})

            def counted() -> bool:  # RabbitMQ counts a published message a moment later
                return len(in_area(check_broker(checked), "rabbitmq")) == 2

            wait_until("the dead letter counted", counted, 10)
            findings = in_area(check_broker(checked), "rabbitmq")
            assert findings[0][0] == "warn" and "0 waiting, 0 consumer(s)" in findings[0][1]
            assert findings[1][0] == "warn"
            assert (
                f"1 message(s) in the dead-letter queue {dead_letter_queue_name(queue)!r}"
                in (findings[1][1])
            )
        finally:
            for name in (queue, dead_letter_queue_name(queue)):
                connection.default_channel.queue_delete(name)
            connection.default_channel.exchange_delete(queue)


def test_workers_in_trouble_are_named(settings: Settings, redis_client: redis.Redis) -> None:
    local = settings.model_copy(update={"redis_prefix": f"{settings.redis_prefix}chk:"})
    store = RedisStore(redis_client, local.redis_prefix)
    assert in_area(check_deployment(local), "workers") == [
        ("warn", f"no worker process serves queue {settings.queue!r}")
    ]
    generation = store.request_reload()
    beat = {"queue": settings.queue, "model_version": "2.1.0", "generation": generation}
    store.heartbeat("h1:1", {**beat, "worker_id": "h1:1"}, 30)
    store.heartbeat("h2:2", {**beat, "worker_id": "h2:2", "last_error": "reload failed: x"}, 30)
    store.heartbeat("h2:3", {**beat, "worker_id": "h2:3", "generation": generation - 1}, 30)
    store.heartbeat("h3:4", {**beat, "worker_id": "h3:4", "queue": "another"}, 30)
    findings = in_area(check_deployment(local), "workers")
    assert findings[0] == (
        "ok",
        f"3 worker process(es) on h1, h2 serve queue {settings.queue!r}, champion model 2.1.0",
    )
    assert sorted(findings[1:]) == [
        ("warn", "h2:2: reload failed: x"),
        (
            "warn",
            f"h2:3 serves reload {generation - 1}, the operators asked for {generation} "
            "(it reloads between jobs)",
        ),
    ]


def beat_champion(store: RedisStore, queue: str, worker_id: str, **champion: str | None) -> None:
    """A worker's heartbeat on ``queue``, serving model 2.1.0 as champion with ``champion``'s
    fields (its registry version, its sha256)."""
    served = {"model_version": "2.1.0", **champion}
    fields = {"worker_id": worker_id, "queue": queue, "generation": 0}
    store.heartbeat(worker_id, {**fields, "models": {"champion": served}}, 30)


def test_workers_behind_the_registry_alias_are_named(
    settings: Settings, redis_client: redis.Redis
) -> None:
    local = settings.model_copy(
        update={"redis_prefix": f"{settings.redis_prefix}chv:", "model_source": "registry"}
    )
    store = RedisStore(redis_client, local.redis_prefix)
    beat_champion(store, settings.queue, "h1:1", registry_version="1")
    beat_champion(store, settings.queue, "h1:2", registry_version="2")
    assert [f.level for f in check_workers(local, named=None)] == ["ok"]
    assert [(f.level, f.message) for f in check_workers(local, named="2")][1:] == [
        (
            "warn",
            "worker processes serve registry version 1 where 'champion' names 2: "
            "`heimdall-inference models reload` moves them to it",
        )
    ]


def test_workers_on_another_model_than_the_folder_are_named(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """A model folder replaced without a reload: the workers' sha256 is not the folder's."""
    local = settings.model_copy(
        update={"redis_prefix": f"{settings.redis_prefix}chs:", "model_source": "dir"}
    )
    named: list[str] = []
    [model] = check_model(local, named)
    assert model.level == "ok" and len(named) == 1 and len(named[0]) == 64
    folder = named[0]
    store = RedisStore(redis_client, local.redis_prefix)
    beat_champion(store, settings.queue, "h1:1", registry_version=None, sha256=folder)
    beat_champion(store, settings.queue, "h1:2", registry_version=None, sha256="ab" * 32)
    assert [f.level for f in check_workers(local, named=None)] == ["ok"]
    assert [f.level for f in check_workers(local, named=folder)] == ["ok", "warn"]
    warning = check_workers(local, named=folder)[1].message
    assert warning == (
        f"worker processes serve a model of sha256 {'ab' * 6}… where {local.model_dir} holds "
        f"{folder[:12]}… (the folder changed since they loaded it, or their hosts' folders "
        "differ): `heimdall-inference models reload` loads the folder again"
    )
    beat_champion(store, settings.queue, "h1:2", registry_version=None, sha256=folder)  # reloaded
    assert [f.level for f in check_workers(local, named=folder)] == ["ok"]


def test_the_registry_champion_and_its_outage(settings: Settings, tmp_path: Path) -> None:
    local = settings.model_copy(update={"model_source": "registry", "data_dir": tmp_path})
    [(level, message)] = in_area(check_deployment(local), "model")
    assert level == "warn" and "the registry holds no version of heimdall-localization" in message

    serving_model_dir(local, bootstrap=True)  # a worker's start: registers and fetches
    [(level, message)] = in_area(check_deployment(local), "model")
    assert (level, message) == (
        "ok",
        "heimdall-localization version 1 ('champion'); this host's copy verified",
    )
    [(level, message)] = in_area(
        check_deployment(local.model_copy(update={"model_alias": "missing"})), "model"
    )
    assert level == "fail" and "models promote VERSION --alias missing" in message

    # MLflow keeps the store it opened for the process: the outage is seen by a new one
    database = tmp_path / "mlflow" / "mlflow.db"  # the embedded registry cannot be opened
    database.rename(tmp_path / "kept.db")
    database.mkdir()
    [(level, message)] = in_area(run_check(local), "model")
    assert level == "warn" and "does not answer" in message
    assert "processes starting on this host serve version 1" in message
    shutil.rmtree(tmp_path / "model-cache" / "heimdall-localization" / "1")
    [(level, message)] = in_area(run_check(local), "model")
    assert level == "fail" and message.endswith("this host holds no copy to serve")


def test_a_store_that_refuses_the_check_is_named_with_the_setting_to_change(
    settings: Settings,
) -> None:
    """A password or a database that is wrong is not a store down: the line says what to change."""
    refusing = refusing_settings(settings)
    for check, area, setting in [
        (check_broker, "rabbitmq", "HEIMDALL_BROKER_URL"),
        (check_redis, "redis", "HEIMDALL_REDIS_URL"),
        (check_database, "postgresql", "HEIMDALL_DATABASE_URL"),
    ]:
        (finding,) = check(refusing)
        assert (finding.area, finding.level) == (area, "fail"), finding
        assert " refused: " in finding.message and setting in finding.message, finding
        assert "not-its-password" not in finding.message


def test_a_silent_redis_is_waited_on_once_not_by_each_check_that_reads_it(
    settings: Settings,
) -> None:
    """The workers' and apis' heartbeats are in Redis: once its own check found it silent, each
    read of them would wait out its timeout again (5 s each, a check of 7.8 s in all before)."""
    from urllib.parse import urlsplit

    from tools.silent_relay import SilentProxy

    parts = urlsplit(settings.redis_url)
    relay = SilentProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    relay.speaking.clear()
    try:
        credentials = parts.netloc.rpartition("@")[0]
        netloc = f"{credentials}@127.0.0.1" if credentials else "127.0.0.1"
        silent = parts._replace(netloc=f"{netloc}:{relay.port}").geturl()
        findings = check_deployment(settings.model_copy(update={"redis_url": silent}))
    finally:
        relay.close()
    assert [f.level for f in findings if f.area == "redis"] == ["fail"], findings
    assert "workers" not in {f.area for f in findings} and "api" in {f.area for f in findings}
    assert relay.connections == 1  # the redis check's own


def test_the_command_exits_1_on_a_failure_and_on_a_warning_when_strict(
    settings: Settings, engine: sa.Engine
) -> None:
    broken = settings.model_copy(update={"database_schema": f"none_{uuid.uuid4().hex[:6]}"})
    command = [sys.executable, "-m", "inference_worker.cli", "check"]
    done = subprocess.run(
        command, env=worker_env(broken), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1, done.stderr
    assert "\nFAIL  postgresql the job schema" in done.stdout and "1 failure(s)" in done.stderr
    assert [f.level for f in run_check(broken) if f.area == "postgresql"] == ["fail"]

    alone = settings.model_copy(update={"redis_prefix": f"{settings.redis_prefix}alone:"})
    sound = run_check(alone)  # the session's schema is migrated; no worker beats here
    assert not [f for f in sound if f.level == "fail"]
    assert ("workers", "warn") in [(f.area, f.level) for f in sound]
    strict = subprocess.run(
        [*command, "--strict"], env=worker_env(alone), capture_output=True, timeout=60
    )
    assert strict.returncode == 1
    areas = [f.area for f in run_check(alone, "--skip", "api", "--skip", "workers")]
    assert areas and not {"api", "workers"} & set(areas)  # a host that runs no api, say


def test_hosts_that_bound_tdoa_sets_differently_are_named(own_queue_factory, tmp_path: Path):
    """A shim or producer that takes more receivers than a worker runs has those jobs failed
    by the worker's own ``HEIMDALL_TDOA_MAX_RECEIVERS``: each process announces its bound."""
    local, store, start_worker = own_queue_factory(tdoa_max_receivers=6)
    with start_worker("bounded") as process:
        wait_until(
            "the worker's heartbeat",
            lambda: any(w.get("queue") == local.queue for w in store.workers()),
            60,
            process,
        )
        [worker] = [w for w in store.workers() if w.get("queue") == local.queue]
        assert worker["tdoa_max_receivers"] == 6
        api = {"queue": local.queue, "host": "hx"}
        store.api_heartbeat("hx:1", {**api, "url": "http://hx:8003", "tdoa_max_receivers": 8}, 30)
        store.api_heartbeat("hx:2", {**api, "url": "http://hx:8004", "tdoa_max_receivers": 6}, 30)
        store.api_heartbeat("hx:3", {**api, "url": "http://hx:8005"}, 30)  # an older release
        here = local.model_copy(update={"tdoa_max_receivers": 12})
        assert [(f.level, f.message) for f in check_workers(here)][1:] == [
            (
                "warn",
                "TDoA sets of more than 6 receivers are accepted and then fail: worker "
                f"{worker['worker_id']} runs at most 6 (its HEIMDALL_TDOA_MAX_RECEIVERS), but "
                "a producer client with this host's settings takes up to 12; the api at "
                "http://hx:8003 takes up to 8; set the same bound on every host",
            )
        ]
        store.forget_api("hx:1")
        assert [f.level for f in check_workers(local)] == ["ok"]
