"""Fault injection under a steady stream of submissions: nothing accepted is lost or done twice.

A real shim (gunicorn) and two real workers run against the machine's RabbitMQ, Redis and
PostgreSQL while a client thread submits captures over HTTP without pause. Meanwhile the test
kills a worker with SIGKILL while it holds a job and starts it again, restarts RabbitMQ (the
whole server, not only its connections: about 15 s here), restarts Redis, and stops PostgreSQL
for a few seconds. Every service it stops is started again by ``tools/local_services.sh``, also
when the test fails. Afterwards every job that got a 202 must have exactly one recorded result,
and every refusal must have been a prompt 503 that says which service is down.

It stops and starts the machine's real services, so it runs only when asked for:
``HEIMDALL_FAULT_TESTS=1`` (``.ci/run`` sets it). It also needs the service commands of a
development machine (rabbitmqctl, redis-cli, pg_ctlcluster), root, and services on loopback; asked
for but unable to run, it fails in CI and is skipped elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np
import pytest
import sqlalchemy as sa
from urllib3 import encode_multipart_formdata

from inference_worker.cli.processes import cli_process, wait_until
from inference_worker.science.kiwi_sets import synthetic_set
from inference_worker.storage.database import JobStore
from inference_worker.storage.schema import inference_logs, jobs
from tests.helpers import capture_query, npy_bytes
from tests.integration.helpers import forget_workers, free_port, worker_env
from tests.integration.service_control import (
    cannot_run,
    kill_the_worker_holding_a_job,
    require_opt_in,
    restart_rabbitmq,
    restart_redis,
    restore_services,
    stop_postgres_for,
)

SUITE = "the fault-injection suite"
CONTROL_COMMANDS = ("rabbitmqctl", "rabbitmq-server", "redis-cli", "redis-server", "pg_ctlcluster")
SUBMIT_INTERVAL_S = 0.1
CLIENT_TIMEOUT_S = 30.0
"""A submission unanswered this long counts as a hang (status 0), which fails the test; how long
refusals take is reported, not asserted (the shim gives the broker ~3 s, the stores 3 s)."""
SEED = 20261127
POSTGRES_DOWN_S = 5.0


@pytest.fixture
def services_under_our_control(settings, engine):
    require_opt_in("restarts this machine's RabbitMQ, Redis and PostgreSQL")
    missing = [c for c in CONTROL_COMMANDS if shutil.which(c) is None]
    hosts = {
        urllib.parse.urlsplit(url.replace("postgresql+psycopg2", "postgresql")).hostname
        for url in (settings.broker_url, settings.redis_url, settings.database_url)
    }
    if missing:
        cannot_run(SUITE, f"service commands not installed: {', '.join(missing)}")
    if os.geteuid() != 0:
        cannot_run(SUITE, "stopping and starting the services needs root")
    if not hosts <= {"127.0.0.1", "localhost"}:
        cannot_run(SUITE, f"services are not all on loopback: {sorted(h or '?' for h in hosts)}")
    try:
        yield
    finally:
        restore_services()  # whatever happened, leave every service running
        engine.dispose()  # the tests after this one start with fresh connections


@dataclass
class Answer:
    phase: str
    status: int
    body: dict
    seconds: float
    tdoa: bool = False


TDOA_EVERY = 6
"""Every this many submissions is a TDoA set (KiwiSDR WAV files) instead of a model capture."""


@dataclass
class Load:
    """A client thread that submits captures over HTTP until stopped: model captures, and every
    ``TDOA_EVERY``-th a TDoA set, so both methods go through the same faults."""

    base_url: str
    captures: list
    tdoa_sets: list = field(default_factory=list)
    phase: str = "steady"
    answers: list[Answer] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def submit(self, index: int) -> Answer:
        # A new capture every time (a repeated one would be answered from the result cache
        # without touching the broker).
        if self.tdoa_sets and index % TDOA_EVERY == TDOA_EVERY - 1:
            request = self.tdoa_request(self.tdoa_sets[index % len(self.tdoa_sets)])
        else:
            capture = self.captures[index % len(self.captures)]
            data = npy_bytes(capture.iq * np.complex64(1.0 + 1e-6 * (index + 1)))
            query = capture_query(capture)
            request = urllib.request.Request(
                f"{self.base_url}/predict?{urllib.parse.urlencode(query)}",
                data=data,
                headers={"Content-Type": "application/x-npy"},
                method="POST",
            )
        phase, started = self.phase, time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=CLIENT_TIMEOUT_S) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        except OSError as exc:  # no answer at all: a hang or a refused connection
            status, raw = 0, json.dumps({"error": {"message": repr(exc)}}).encode()
        try:
            body = json.loads(raw)
        except ValueError:
            body = {"raw": raw[:200].decode(errors="replace")}
        tdoa = request.get_header("Content-type", "").startswith("multipart/")
        answer = Answer(phase, status, body, time.monotonic() - started, tdoa)
        self.answers.append(answer)
        return answer

    def tdoa_request(self, recordings) -> urllib.request.Request:
        fields: list[tuple[str, str | tuple[str, bytes, str]]] = [
            ("receivers", json.dumps(recordings.positions())),
            ("frequency_mhz", str(recordings.frequency_hz / 1e6)),
        ]
        fields += [
            ("capture", (name, data, "audio/wav"))
            for name, data in zip(recordings.names, recordings.files, strict=True)
        ]
        body, content_type = encode_multipart_formdata(fields)
        return urllib.request.Request(
            f"{self.base_url}/predict",
            data=body,
            headers={"Content-Type": content_type},
            method="POST",
        )

    def accepted(self) -> int:
        return sum(a.status == 202 for a in list(self.answers))

    def run(self) -> None:
        index = 0
        while not self.stop.is_set():
            self.submit(index)
            index += 1
            self.stop.wait(SUBMIT_INTERVAL_S)


def test_nothing_accepted_is_lost_or_done_twice_through_faults(
    services_under_our_control, own_queue, engine, simulator, tmp_path
):
    local, store, start_worker = own_queue
    rng = np.random.default_rng(SEED)
    captures = [simulator.simulate(rng, sample_rate_hz=12_000.0, duration_s=1.0) for _ in range(40)]
    port = free_port()
    env = {**worker_env(local), "HEIMDALL_WORKER_METRICS_PORT": "0"}
    api_args = ["api", "--port", str(port), "--workers", "2"]
    tdoa_sets = [
        synthetic_set(np.random.default_rng(SEED + k), receivers=3 + k, seconds=5.0)
        for k in range(2)
    ]
    load = Load(f"http://127.0.0.1:{port}", captures, tdoa_sets)
    log: list[str] = []

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{load.base_url}/health", timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    def settle(what: str) -> None:
        """Wait until the shim reports every service healthy and a new job gets through."""
        wait_until(f"the shim after {what}", healthy, 90)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            answer = load.submit(100_000 + len(load.answers))  # a new capture
            if answer.status == 202:
                job_id = answer.body["job_id"]
                wait_until(
                    f"a job after {what}",
                    lambda: (jobs_store.get(job_id) or {}).get("status") == "succeeded",  # noqa: B023
                    90,
                )
                return
            time.sleep(0.5)
        raise AssertionError(f"no job accepted after {what}")

    jobs_store = JobStore(engine)
    with ExitStack() as stack:
        api = stack.enter_context(cli_process(api_args, tmp_path / "api.log", env))
        workers = {name: stack.enter_context(start_worker(name)) for name in ("A", "B")}
        wait_until("the shim", healthy, 60, api)
        wait_until("two workers", lambda: len(store.workers()) >= 2, 60, workers["B"])
        thread = threading.Thread(target=load.run, name="load", daemon=True)
        thread.start()
        try:
            wait_until("steady submissions", lambda: load.accepted() >= 20, 60)

            load.phase = "worker killed"
            held, killed = kill_the_worker_holding_a_job(engine, local, captures[0], workers)
            log.append(f"SIGKILL to worker {killed} while it held job {held}")
            forget_workers(store)
            wait_until("the surviving worker's heartbeat", lambda: len(store.workers()) >= 1, 30)
            workers[killed] = stack.enter_context(start_worker(f"{killed}-again"))
            wait_until(f"worker {killed} again", lambda: len(store.workers()) >= 2, 60)
            load.phase = "steady"
            settle("the worker restart")

            faults = (
                ("RabbitMQ restart", restart_rabbitmq, "RabbitMQ restarted in"),
                ("Redis restart", restart_redis, "Redis restarted in"),
                (
                    "PostgreSQL down",
                    lambda: stop_postgres_for(POSTGRES_DOWN_S),
                    "PostgreSQL unreachable for",
                ),
            )
            for phase, inject, done in faults:
                load.phase = phase
                started = time.monotonic()
                inject()
                log.append(f"{done} {time.monotonic() - started:.1f} s")
                settle(f"the {phase}")
                load.phase = "steady"
            load.phase = "steady"
            before = load.accepted()
            wait_until("submissions after the faults", lambda: load.accepted() >= before + 10, 60)
            load.stop.set()
            thread.join(timeout=CLIENT_TIMEOUT_S + 5)

            accepted = sorted({a.body["job_id"] for a in load.answers if a.status == 202} | {held})

            def unfinished() -> int:
                with engine.connect() as connection:
                    return connection.execute(
                        sa.select(sa.func.count()).where(
                            jobs.c.job_id.in_(accepted),
                            jobs.c.status.in_(("succeeded", "failed")),
                        )
                    ).scalar_one() - len(accepted)

            try:
                wait_until("every accepted job final", lambda: unfinished() == 0, 120)
            except RuntimeError:
                pass  # counted and reported below
        finally:
            load.stop.set()

    with engine.connect() as connection:
        statuses = Counter(
            dict(
                connection.execute(
                    sa.select(jobs.c.status, sa.func.count())
                    .where(jobs.c.job_id.in_(accepted))
                    .group_by(jobs.c.status)
                ).all()
            )
        )
        results_per_job = Counter(
            n
            for _, n in connection.execute(
                sa.select(inference_logs.c.job_id, sa.func.count())
                .where(inference_logs.c.job_id.in_(accepted))
                .group_by(inference_logs.c.job_id)
            ).all()
        )
        redelivered = connection.execute(
            sa.select(sa.func.count()).where(jobs.c.job_id.in_(accepted), jobs.c.attempts > 1)
        ).scalar_one()
        failures = connection.execute(
            sa.select(jobs.c.job_id, jobs.c.error).where(
                jobs.c.job_id.in_(accepted), jobs.c.status == "failed"
            )
        ).all()

    finished = statuses["succeeded"] + statuses["failed"]
    lost = len(accepted) - finished
    duplicated = sum(count for n, count in results_per_job.items() if n > 1)
    by_phase: dict[str, Counter] = {}
    for answer in load.answers:
        by_phase.setdefault(answer.phase, Counter())[answer.status] += 1
    refusals = [a for a in load.answers if a.status == 503]
    messages = Counter(a.body.get("error", {}).get("message") for a in refusals)
    slowest = max((a.seconds for a in refusals), default=0.0)
    print("\n" + "\n".join(log))
    for phase, counts in by_phase.items():
        print(f"  {phase}: " + ", ".join(f"HTTP {s}: {n}" for s, n in sorted(counts.items())))
    slowest_accept = max((a.seconds for a in load.answers if a.status == 202), default=0.0)
    print(
        f"  503 messages: {dict(messages)}; slowest refusal {slowest:.1f} s, "
        f"slowest acceptance {slowest_accept:.1f} s"
    )
    print(
        f"jobs accepted: {len(accepted)}, finished: {finished} (succeeded "
        f"{statuses['succeeded']}, failed {statuses['failed']}), lost: {lost}, "
        f"duplicated: {duplicated}; taken more than once: {redelivered}"
    )

    tdoa = [a.body["job_id"] for a in load.answers if a.status == 202 and a.tdoa]
    print(f"TDoA sets among them: {len(tdoa)}")
    assert tdoa, "no TDoA set was accepted"
    assert lost == 0
    assert duplicated == 0
    assert failures == [], failures
    assert all(a.status in (202, 503) for a in load.answers), by_phase
    assert all(
        a.body.get("error", {}).get("code") == "service_unavailable"
        and "unavailable" in a.body["error"]["message"]
        for a in refusals
    ), messages
    assert by_phase["RabbitMQ restart"][503] > 0 and by_phase["PostgreSQL down"][503] > 0
