"""The job store's statements in their PREPARE / EXECUTE form."""

from __future__ import annotations

from inference_worker.storage.job_sql import CREATE, PREPARED_NAMES, START_MANY, SUCCEED_MANY
from inference_worker.storage.pooled import prepared_form


def test_named_parameters_become_positional_in_the_order_of_first_use():
    form = prepared_form("SELECT %(b)s, %(a)s, %(b)s WHERE x LIKE 'a%%'")
    assert form.params == ("b", "a")
    assert form.prepare == f"PREPARE {form.name} AS SELECT $1, $2, $1 WHERE x LIKE 'a%'"
    assert form.execute == f"EXECUTE {form.name}(%s, %s)"


def test_the_job_stores_statements_are_prepared_under_names_an_operator_can_read():
    form = prepared_form(START_MANY)
    assert form.execute == "EXECUTE heimdall_start_many(%s)"
    assert len(set(PREPARED_NAMES.values())) == len(PREPARED_NAMES)


def test_an_unnamed_statement_is_named_after_its_text_alike_in_every_process():
    names = {prepared_form(s).name for s in (CREATE, START_MANY, SUCCEED_MANY)}
    assert len(names) == 3
    before = prepared_form(CREATE).name
    prepared_form.cache_clear()  # as another process would derive it
    assert prepared_form(CREATE).name == before
    assert "%(" not in prepared_form(CREATE).prepare


def test_a_statement_without_parameters_executes_by_name_alone():
    form = prepared_form("SELECT 1")
    assert (form.params, form.execute) == ((), f"EXECUTE {form.name}")
