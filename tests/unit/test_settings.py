"""The settings object: defaults for this machine, environment overrides, clear errors."""

from __future__ import annotations

import pydantic
import pytest

from inference_worker.cli.main import main
from inference_worker.settings import DEFAULT_MODEL_DIR, Settings, load_settings


def refused_at_start(monkeypatch, capsys, variables: dict[str, str]) -> str:
    """What the command line says of ``variables`` (it must refuse them, exit code 2). The
    command is ``check``, which changes nothing should a value be taken after all."""
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_:
        main(["check"])
    assert exit_.value.code == 2
    return capsys.readouterr().err


def test_defaults_point_at_the_local_services_and_the_packaged_model(monkeypatch):
    for name in ("HEIMDALL_BROKER_URL", "HEIMDALL_REDIS_URL", "HEIMDALL_MODEL_DIR"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.broker_url.startswith("amqp://")
    assert "127.0.0.1" in settings.redis_url
    assert settings.model_dir == DEFAULT_MODEL_DIR
    assert (settings.model_dir / "model.onnx").is_file()


def test_environment_overrides_defaults(monkeypatch):
    monkeypatch.setenv("HEIMDALL_RESULT_TTL_S", "120")
    monkeypatch.setenv("HEIMDALL_QUEUE", "other")
    settings = load_settings()
    assert settings.result_ttl_s == 120 and settings.queue == "other"


def test_invalid_values_are_refused_with_the_variable_named(monkeypatch):
    monkeypatch.setenv("HEIMDALL_WORKER_CONCURRENCY", "0")
    with pytest.raises(pydantic.ValidationError, match="worker_concurrency"):
        load_settings()


FLOAT_SETTINGS = [
    name for name, field in Settings.model_fields.items() if field.annotation is float
]


@pytest.mark.parametrize("name", FLOAT_SETTINGS)
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "Infinity"])
def test_no_number_setting_takes_an_infinity_or_nan(monkeypatch, name, value):
    """``HEIMDALL_RETENTION_DAYS=inf`` was taken, and the hourly prune's ``timedelta`` of it
    raised OverflowError; an infinite sample-rate bound lifted the bound on a job's work."""
    monkeypatch.setenv(f"HEIMDALL_{name.upper()}", value)
    with pytest.raises(pydantic.ValidationError, match=f"{name}[\\s\\S]*finite number"):
        load_settings()


def test_tdoa_sets_are_bounded_by_what_a_worker_locates_within_its_time_limit(monkeypatch):
    monkeypatch.setenv("HEIMDALL_TDOA_MAX_RECEIVERS", "32")
    assert load_settings().tdoa_max_receivers == 32
    monkeypatch.setenv("HEIMDALL_TDOA_MAX_RECEIVERS", "64")
    with pytest.raises(pydantic.ValidationError, match="tdoa_max_receivers"):
        load_settings()


def test_the_default_body_bound_takes_the_default_most_receivers_30_s_each(monkeypatch):
    """kiwirecorder's IQ modes record at 12 and 20.25 kHz; the README suggests about 30 s."""
    import numpy as np

    from inference_worker.core.kiwi_wav import BLOCK_SAMPLES, write_kiwi_wav

    monkeypatch.delenv("HEIMDALL_MAX_BODY_BYTES", raising=False)
    monkeypatch.delenv("HEIMDALL_TDOA_MAX_RECEIVERS", raising=False)
    settings = load_settings()
    samples = 30 * 20_250
    one = write_kiwi_wav(
        np.zeros(samples, np.complex64),
        np.arange(-(-samples // BLOCK_SAMPLES), dtype=float),
        header_rate_hz=20_250,
    )
    assert settings.tdoa_max_receivers * len(one) <= settings.max_body_bytes


def test_the_command_line_names_each_bad_variable_as_it_is_set(monkeypatch, capsys):
    """pydantic's report named fields (``worker_batch_size``), which nobody sets, over four
    lines a variable with a link; an API key's entry (it holds the key) is not repeated."""
    lines = refused_at_start(
        monkeypatch,
        capsys,
        {
            "HEIMDALL_WORKER_BATCH_SIZE": "abc",
            "HEIMDALL_MAX_DELIVERIES": "0",
            "HEIMDALL_API_KEYS": '[{"name": "lab", "key": "short-s3cret"}]',
        },
    ).splitlines()
    assert lines[:2] == [
        "error: invalid setting HEIMDALL_WORKER_BATCH_SIZE: Input should be a valid integer, "
        "unable to parse string as an integer (got 'abc')",
        "error: invalid setting HEIMDALL_MAX_DELIVERIES: Input should be greater than or equal "
        "to 1 (got '0')",
    ]
    assert lines[2:] == [
        "error: invalid setting HEIMDALL_API_KEYS[0]: API key 'lab': a key needs at least 16 "
        "characters"
    ]


def test_settings_checked_together_and_unparsable_lists_are_named_as_set(monkeypatch, capsys):
    assert refused_at_start(monkeypatch, capsys, {"HEIMDALL_TASK_TIME_LIMIT_S": "10"}) == (
        "error: invalid settings: HEIMDALL_TASK_TIME_LIMIT_S must be above "
        "HEIMDALL_TASK_SOFT_TIME_LIMIT_S\n"
    )
    monkeypatch.delenv("HEIMDALL_TASK_TIME_LIMIT_S")
    assert refused_at_start(monkeypatch, capsys, {"HEIMDALL_API_KEYS": "not json"}).startswith(
        "error: invalid settings: HEIMDALL_API_KEYS is not valid JSON (Expecting value"
    )


@pytest.mark.parametrize(
    "given",
    [
        "postgresql://svc:pw@db.example:5432/heimdall",
        "postgres://svc:pw@db.example:5432/heimdall",
        "PostgreSQL://svc:pw@db.example:5432/heimdall",
        "postgresql+psycopg2://svc:pw@db.example:5432/heimdall",
    ],
)
def test_postgresql_urls_in_their_common_forms_mean_the_installed_driver(given):
    """SQLAlchemy 2.1 reads ``postgresql://`` as psycopg 3 (not installed) and knows no
    ``postgres://``: each was a traceback at the first statement."""
    settings = load_settings(database_url=given, registry_uri=given)
    expected = "postgresql+psycopg2://svc:pw@db.example:5432/heimdall"
    assert settings.database_url == expected and settings.registry_uri == expected


def test_registry_uris_of_other_stores_are_left_as_they_are():
    for uri in (
        "",
        "http://mlflow:5000",
        "https://m.example/x",
        "sqlite:////srv/mlflow.db",
        "databricks",
    ):
        assert load_settings(registry_uri=uri).registry_uri == uri


def test_a_driver_that_is_not_installed_is_named_without_the_password(monkeypatch, capsys):
    given = {
        "HEIMDALL_DATABASE_URL": "postgresql+psycopg://svc:s3cret@db/heimdall",
        "HEIMDALL_REGISTRY_URI": "mysql://svc:s3cret@db/mlflow",
    }
    assert refused_at_start(monkeypatch, capsys, given) == (
        "error: invalid setting HEIMDALL_DATABASE_URL: the driver 'psycopg' is not installed: the "
        "service talks to PostgreSQL through psycopg2 (write postgresql://... or "
        "postgresql+psycopg2://...) (got 'postgresql+psycopg://***@db/heimdall')\n"
        "error: invalid setting HEIMDALL_REGISTRY_URI: must be empty (an embedded SQLite registry "
        "in HEIMDALL_DATA_DIR), sqlite:///path, postgresql://..., an MLflow server's "
        "http(s)://... or databricks (got 'mysql://***@db/mlflow')\n"
    )
    refusal = refused_at_start(
        monkeypatch, capsys, {"HEIMDALL_DATABASE_URL": "redis://127.0.0.1:6379/0"}
    )
    assert "HEIMDALL_DATABASE_URL: must be a PostgreSQL URL" in refusal


@pytest.mark.parametrize("variable", ["HEIMDALL_DATABASE_URL", "HEIMDALL_REGISTRY_URI"])
def test_a_postgresql_url_the_driver_cannot_read_is_named_without_the_password(
    monkeypatch, capsys, variable
):
    """A port that is no number was a traceback from SQLAlchemy's URL parser at start."""
    err = refused_at_start(
        monkeypatch, capsys, {variable: "postgresql://svc:s3cret@db:abc/heimdall"}
    )
    assert err.startswith(
        f"error: invalid setting {variable}: is not a URL the PostgreSQL driver can read ("
    )
    assert err.endswith(") (got 'postgresql://***@db:abc/heimdall')\n") and "s3cret" not in err


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("HEIMDALL_BROKER_URL", "amqp://svc:s3cret@mq:abc//", "Port could not be cast to integer"),
        ("HEIMDALL_BROKER_URL", "redis://127.0.0.1:6379/0", "must be a RabbitMQ URL"),
        ("HEIMDALL_BROKER_URL", "rabbit.example", "must be a RabbitMQ URL"),
        ("HEIMDALL_REDIS_URL", "redis://:s3cret@cache:abc/0", "Port could not be cast to integer"),
        ("HEIMDALL_REDIS_URL", "cache.example:6379", "Redis URL must specify one of the following"),
        # redis-py took it as database 0 without a word
        ("HEIMDALL_REDIS_URL", "redis://cache:6379/jobs", "the database 'jobs' is no number"),
        # MLflow 3's folder store raises at first use; no MySQL driver is installed
        ("HEIMDALL_REGISTRY_URI", "file:///srv/mlruns", "must be empty (an embedded SQLite"),
        ("HEIMDALL_REGISTRY_URI", "./mlruns", "must be empty (an embedded SQLite"),
        ("HEIMDALL_REGISTRY_URI", "mysql://svc:s3cret@db/mlflow", "must be empty (an embedded"),
        # RabbitMQ refused an empty name; one past 255 bytes broke the AMQP frame (struct.error)
        ("HEIMDALL_QUEUE", "", "a queue name is 1-250 bytes (RabbitMQ's 255 less .dead)"),
        ("HEIMDALL_QUEUE", "q" * 251, "a queue name is 1-250 bytes"),
        ("HEIMDALL_QUEUE", "amq.jobs", "names starting with amq. are RabbitMQ's own"),
        # MLflow's own traceback at the first registry call, or at the first registration
        ("HEIMDALL_MODEL_NAME", "", "a registered model's name is not empty and holds no / or :"),
        ("HEIMDALL_MODEL_NAME", "team/model", "a registered model's name is not empty"),
        ("HEIMDALL_MODEL_ALIAS", "best model", "alias 'best model': an alias is 1-64 of"),
        ("HEIMDALL_MODEL_ALIAS", "latest", "alias 'latest' is reserved by the registry"),
    ],
)
def test_a_url_or_name_its_service_cannot_use_is_refused_at_start(
    monkeypatch, capsys, variable, value, reason
):
    """A port that is no number was a traceback when the api or Flower started (the reachability
    message itself parsed the URL); a Redis URL without its scheme stopped every command; the
    others were tracebacks where they were first used."""
    err = refused_at_start(monkeypatch, capsys, {variable: value})
    assert err.startswith(f"error: invalid setting {variable}: {reason}") and "s3cret" not in err


def test_an_unreadable_url_is_still_printed_without_its_credentials():
    from inference_worker.urls import redact_url

    assert redact_url("amqp://svc:s3cret@mq:abc//") == "amqp://***@mq:abc//"
    assert redact_url("postgresql://svc:s3cret@db/x") == "postgresql://svc:***@db/x"
    assert redact_url("nonsense") == "nonsense"


def test_redis_prefix_always_ends_with_a_colon():
    assert load_settings(redis_prefix="svc").redis_prefix == "svc:"


def test_the_public_url_of_the_api_is_an_http_url_without_a_trailing_slash():
    assert load_settings(api_public_url="https://h.example/api/").api_public_url == (
        "https://h.example/api"
    )
    assert load_settings(api_public_url="").api_public_url == ""
    for wrong in ("h.example:8003", "ftp://h.example", "http://"):
        with pytest.raises(pydantic.ValidationError, match="not an http:// or https:// URL"):
            load_settings(api_public_url=wrong)


def test_schema_names_are_restricted_to_safe_identifiers():
    with pytest.raises(pydantic.ValidationError):
        load_settings(database_schema='x"; DROP TABLE jobs; --')


def test_env_example_lists_every_setting():
    from pathlib import Path

    from inference_worker.settings import Settings

    text = (Path(__file__).resolve().parents[2] / ".env.example").read_text()
    missing = [f for f in Settings.model_fields if f"HEIMDALL_{f.upper()}=" not in text]
    assert not missing, f".env.example lacks {missing}"


@pytest.mark.parametrize(
    ("variable", "value", "why"),
    [
        # 0.4 ms was rounded to a statement_timeout of 0: PostgreSQL's "no timeout"; a few ms
        # cancel the dialect's first statements on a busy host
        ("DATABASE_STATEMENT_TIMEOUT_S", "0.0004", "greater than or equal to 0.1"),
        ("PUBLISH_CONFIRM_TIMEOUT_S", "0.001", "greater than or equal to 0.1"),
        # past 2^31 - 1 ms every connection failed: "invalid value for parameter"
        ("DATABASE_STATEMENT_TIMEOUT_S", "3000000", "less than or equal to 2147483.647"),
        # the relay spun, or its timed wait raised OverflowError and the relay thread ended
        ("RELAY_INTERVAL_S", "1e-300", "greater than or equal to 0.1"),
        ("RELAY_INTERVAL_S", "1e10", "less than or equal to 86400"),
        ("PUBLISH_CONFIRM_TIMEOUT_S", "1e10", "less than or equal to 86400"),
        ("TASK_TIME_LIMIT_S", "1e10", "less than or equal to 86400"),
        # PostgreSQL's "timestamp out of range" in every count, prune and relay round
        ("STUCK_AFTER_S", "1e12", "less than or equal to 31536000"),
        ("RETENTION_DAYS", "1e7", "less than or equal to 36500"),
        # Redis refuses an expiry past its range: every submission or result would fail
        ("BLOB_TTL_S", str(10**20), "less than or equal to 31536000"),
        ("RESULT_TTL_S", str(10**20), "less than or equal to 31536000"),
        ("CACHE_TTL_S", str(10**20), "less than or equal to 31536000"),
        # a few digits too many forked (or started threads) without end
        ("WORKER_CONCURRENCY", "20000", "less than or equal to 256"),
        ("API_WORKERS", "20000", "less than or equal to 256"),
        ("API_THREADS", "160000", "less than or equal to 1024"),
        ("ONNX_INTRA_OP_THREADS", "10000", "less than or equal to 1024"),
    ],
)
def test_values_the_services_would_fail_on_or_not_honour_are_refused(
    monkeypatch, capsys, variable, value, why
):
    err = refused_at_start(monkeypatch, capsys, {f"HEIMDALL_{variable}": value})
    assert err.startswith(f"error: invalid setting HEIMDALL_{variable}: Input should be {why}")


@pytest.mark.parametrize(
    ("variables", "reason"),
    [
        (
            {"HEIMDALL_OUTBOX_GRACE_S": "600", "HEIMDALL_BLOB_TTL_S": "600"},
            "HEIMDALL_OUTBOX_GRACE_S (600) must be below HEIMDALL_BLOB_TTL_S (600): an "
            "interrupted submission's capture would be gone from Redis",
        ),
        (
            {"HEIMDALL_MIN_SAMPLE_RATE_HZ": "2e7"},
            "HEIMDALL_MIN_SAMPLE_RATE_HZ (2e+07) is above HEIMDALL_MAX_SAMPLE_RATE_HZ (1e+07): "
            "no capture would be accepted",
        ),
    ],
)
def test_settings_that_contradict_each_other_are_refused(monkeypatch, capsys, variables, reason):
    err = refused_at_start(monkeypatch, capsys, variables)
    assert err.startswith(f"error: invalid settings: {reason}")


def test_the_longest_wait_a_setting_gives_is_one_a_thread_can_wait():
    import threading

    from inference_worker.settings_checks import WAIT_MAX_S

    assert WAIT_MAX_S < threading.TIMEOUT_MAX
