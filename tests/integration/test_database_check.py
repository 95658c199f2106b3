"""The database's part of ``heimdall-inference check`` against the real PostgreSQL: a job schema
of this release's migrations, nothing stuck, and connections to spare."""

from __future__ import annotations

import re
import time
import uuid

import psycopg2
import pytest
import sqlalchemy as sa

from inference_worker.serving import store_checks
from inference_worker.serving.store_checks import check_database
from inference_worker.settings import Settings
from inference_worker.storage.database import JobStore
from inference_worker.storage.engine import connection_need, connection_use, known_revisions
from tasks.contract import read_message
from tasks.outbox import record_job
from tests.helpers import capture_message
from tests.integration.helpers import in_area, migrated_schema


def test_schema_missing_behind_ahead_and_stuck_jobs(settings: Settings, capture) -> None:
    schema = f"{settings.database_schema}_chk{uuid.uuid4().hex[:6]}"
    local = settings.model_copy(update={"database_schema": schema, "stuck_after_s": 0.0})
    [(level, message)] = in_area(check_database(local), "postgresql")
    assert level == "fail" and "has no tables yet: run `heimdall-inference migrate`" in message

    with migrated_schema(local.database_url, schema) as engine:
        assert in_area(check_database(local), "postgresql")[0][0] == "ok"
        record_job(JobStore(engine), read_message(capture_message(capture, "waits", "k")))
        time.sleep(0.01)
        [_, (level, message)] = in_area(check_database(local), "postgresql")
        assert level == "warn" and message.startswith("1 job(s) not final 0 s after submission")

        older, newest = known_revisions()[-2:]
        with engine.connect() as connection:
            update = sa.text("UPDATE alembic_version SET version_num = :v")
            connection.execute(update, {"v": older})
            [(level, message)] = in_area(check_database(local), "postgresql")
            assert level == "warn"
            assert f"at migration {older}, this release's is {newest}: run" in message
            connection.execute(update, {"v": "9999"})
            [(level, message)] = in_area(check_database(local), "postgresql")
            assert level == "fail" and "which this release does not know" in message


def test_a_database_near_its_connection_limit_is_named(settings: Settings, monkeypatch) -> None:
    """A server out of connections refuses the next process's (too many clients): the check
    warns at 80 % of what it allows roles without superuser rights, counting heimdall's own."""
    schema = f"{settings.database_schema}_chk{uuid.uuid4().hex[:6]}"
    local = settings.model_copy(update={"database_schema": schema})
    with migrated_schema(local.database_url, schema) as engine, engine.connect() as connection:
        limit = connection.execute(sa.text("SHOW max_connections")).scalar_one()
        reserved = connection.execute(sa.text("SHOW superuser_reserved_connections")).scalar_one()
        allowed = int(limit) - int(reserved)
        near_the_limit(local, allowed, monkeypatch)


def test_settings_keeping_more_connections_than_the_server_leaves_are_named(
    settings: Settings,
) -> None:
    """A host whose shim processes and threads add up to more connections than the server
    leaves heimdall is told so before a load finds the limit (too many clients)."""
    schema = f"{settings.database_schema}_chk{uuid.uuid4().hex[:6]}"
    local = settings.model_copy(update={"database_schema": schema})
    with migrated_schema(local.database_url, schema):
        [(level, message)] = in_area(check_database(local), "postgresql")
        kept = connection_need(local).total
        assert level == "ok" and f"this host's settings keep up to {kept}" in message, message
        shown = re.search(r"of the (\d+) connections it allows", message)
        assert shown, message
        allowed = int(shown[1])
        many = local.model_copy(update={"api_workers": 4, "api_threads": allowed // 4 + 1})
        [(level, message)] = [
            (level, message)
            for level, message in in_area(check_database(many), "postgresql")
            if level != "ok"
        ]
    kept = connection_need(many).total
    assert kept > allowed and level == "warn", message
    found = re.search(
        rf"keep up to {kept} connections .* more than the (\d+) the server leaves them "
        rf"\(it allows {allowed}, other clients hold (\d+)\)",
        message,
    )
    assert found and int(found[1]) + int(found[2]) == allowed, message
    assert "lower HEIMDALL_API_WORKERS or HEIMDALL_API_THREADS" in message


def near_the_limit(settings: Settings, allowed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    findings = in_area(check_database(settings), "postgresql")
    assert [level for level, _ in findings] == ["ok"]  # this server has room to spare

    monkeypatch.setattr(store_checks, "FULL_FRACTION", 0.0)  # any use at all is near the limit
    pattern = re.compile(r"has (\d+) of the (\d+) connections it allows open \((\d+) of them")
    counts = []
    for extra in (0, 3):
        held = [
            psycopg2.connect(
                settings.database_url.replace("+psycopg2", ""), application_name="heimdall-test"
            )
            for _ in range(extra)
        ]
        try:
            [_, (level, message)] = in_area(check_database(settings), "postgresql")
        finally:
            for connection in held:
                connection.close()
        found = pattern.search(message)
        assert level == "warn" and found and "raise max_connections" in message, message
        counts.append([int(n) for n in found.groups()])
    assert counts[0][1] == counts[1][1] == allowed
    assert counts[0][2] >= 1 and counts[1][2] >= 3 + 1  # the check's own, and those held
    assert all(open_ >= ours for open_, _, ours in counts)


def test_a_role_that_cannot_see_other_roles_sessions_still_counts_them(settings: Settings) -> None:
    """PostgreSQL hides other roles' ``backend_type`` from a role without pg_read_all_stats: a
    deployment connecting as its own role counted only its own sessions."""
    role = f"heimdall_chk_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(settings.database_url, isolation_level="AUTOCOMMIT")
    url = sa.make_url(settings.database_url).set(username=role, password=None)
    with admin.connect() as connection:
        connection.execute(sa.text(f"CREATE ROLE {role} LOGIN"))
    plain = sa.create_engine(url)
    named = sa.create_engine(settings.database_url, connect_args={"application_name": "heimdall-t"})
    held = [named.connect() for _ in range(3)]  # heimdall's, of a role the plain one is not
    try:
        seen_by_all, seen_by_plain = connection_use(admin), connection_use(plain)
    finally:
        for connection in held:
            connection.close()
        named.dispose()
        plain.dispose()
        with admin.connect() as connection:
            connection.execute(sa.text(f"DROP ROLE {role}"))
        admin.dispose()
    assert seen_by_plain.allowed == seen_by_all.allowed
    assert seen_by_all.ours >= 3 and abs(seen_by_plain.ours - seen_by_all.ours) <= 2
    assert abs(seen_by_plain.open - seen_by_all.open) <= 3  # sessions come and go meanwhile
