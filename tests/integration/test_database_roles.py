"""The service's database role need not own its database: a role with only the rights on tables
made for it starts, and one without the rights to make them is told so in one line."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
import sqlalchemy as sa

from tests.integration.helpers import migrated_schema, worker_env


@pytest.fixture
def bare_role(settings, engine):
    """A login role of this test's own with no rights at all; its database URL. Dropped after."""
    role = f"heimdall_bare_{uuid.uuid4().hex[:8]}"
    with engine.connect() as connection:
        connection.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))
    try:
        yield (
            role,
            sa.make_url(settings.database_url)
            .set(username=role)
            .render_as_string(hide_password=False),
        )
    finally:
        with engine.connect() as connection:
            connection.execute(sa.text(f'DROP OWNED BY "{role}"'))
            connection.execute(sa.text(f'DROP ROLE "{role}"'))


def run_migrate(settings, database_url: str, schema: str) -> subprocess.CompletedProcess:
    env = {
        **worker_env(settings),
        "HEIMDALL_DATABASE_URL": database_url,
        "HEIMDALL_DATABASE_SCHEMA": schema,
    }
    command = [sys.executable, "-m", "inference_worker.cli", "migrate"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(autouse=True)
def _queue_removed_after(queue_cleanup):
    """``migrate`` declares the test queue too."""


def test_a_role_without_rights_to_make_the_schema_is_told_so_in_one_line(settings, bare_role):
    """It ended in a traceback whose last error hid the refusal (the advisory unlock, run in
    the aborted transaction)."""
    _, url = bare_role
    done = run_migrate(settings, url, f"{settings.database_schema}_bare")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "permission denied for database" in done.stderr
    assert "grant the role CREATE on the database" in done.stderr


def test_a_role_with_rights_on_its_tables_only_starts_on_a_schema_made_for_it(settings, bare_role):
    """An administrator migrated the schema and granted the service's role what it uses: the
    role's start (which migrates) failed, since creating a schema that exists still needs the
    right to create one."""
    role, url = bare_role
    schema = f"{settings.database_schema}_granted"
    with migrated_schema(settings.database_url, schema) as admin:
        with admin.begin() as connection:
            connection.execute(sa.text(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"'))
            rights = "SELECT, INSERT, UPDATE, DELETE ON ALL TABLES"
            connection.execute(sa.text(f'GRANT {rights} IN SCHEMA "{schema}" TO "{role}"'))
        done = run_migrate(settings, url, schema)
        assert done.returncode == 0, done.stderr
        assert f"database schema '{schema}' is up to date" in done.stdout


def test_a_database_that_takes_no_writes_is_named_without_a_wrong_remedy(
    settings, bare_role, engine
):
    """A standby (here: a role whose transactions are read-only) refuses the migration for
    another reason than rights: the line says so, and does not advise a grant."""
    role, url = bare_role
    with engine.connect() as connection:
        connection.execute(sa.text(f'ALTER ROLE "{role}" SET default_transaction_read_only = on'))
    done = run_migrate(settings, url, f"{settings.database_schema}_standby")
    assert done.returncode == 2, done.stderr
    assert "read-only transaction" in done.stderr and "grant" not in done.stderr


def test_a_schema_a_newer_release_migrated_is_named_and_left_as_it_is(settings):
    """An older release started on a schema a newer one had migrated (a rollback): `migrate`,
    and with it every service's start, ended in Alembic's traceback; it is one line now, and
    the schema keeps the newer release's migration."""
    schema = f"{settings.database_schema}_newer"
    with migrated_schema(settings.database_url, schema) as engine:
        with engine.connect() as connection:
            connection.execute(sa.text("UPDATE alembic_version SET version_num = '9999_newer'"))
        done = run_migrate(settings, settings.database_url, schema)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        assert f"the job schema '{schema}' is at migration 9999_newer, which this release " in (
            done.stderr
        )
        assert "a newer release migrated it; run that release here" in done.stderr
        with engine.connect() as connection:
            kept = connection.execute(sa.text("SELECT version_num FROM alembic_version"))
            assert kept.scalar() == "9999_newer"
