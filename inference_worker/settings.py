"""The one settings object of the service, built once from the environment.

Every setting is read from an environment variable named ``HEIMDALL_`` + the field name in
upper case (``HEIMDALL_BROKER_URL``, ``HEIMDALL_RESULT_TTL_S``, ...), or from a ``.env`` file in
the working directory. Defaults run against the local services of a development machine.
``.env.example`` at the repository root lists them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from inference_worker.api_keys import ApiKey, check_rate_limit
from inference_worker.settings_checks import (
    CHECKED,
    POSTGRESQL_TIMEOUT_MAX_S,
    PROCESSES_MAX,
    RETENTION_DAYS_MAX,
    RULES,
    THREADS_MAX,
    WAIT_MAX_S,
    YEAR_S,
    checked,
)

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL_DIR = PACKAGE_DIR / "models" / "reference"
CENTROID_MODEL_DIR = PACKAGE_DIR / "models" / "centroid"


class Settings(BaseSettings):
    """Typed configuration shared by the worker, the HTTP shim and the CLI."""

    model_config = SettingsConfigDict(
        env_prefix="HEIMDALL_",
        env_file=".env",
        extra="ignore",
        frozen=True,
        allow_inf_nan=False,  # no setting means "without bound" by inf (0 does, where said)
        protected_namespaces=(),  # model_source and the like: pydantic before 2.10 warned
    )

    # --- services -------------------------------------------------------------------------
    broker_url: str = Field(
        "amqp://guest:guest@127.0.0.1:5672//", description="RabbitMQ URL (AMQP 0-9-1)."
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", description="Redis: capture blobs, results, the result cache."
    )
    database_url: str = Field(
        "postgresql+psycopg2://postgres@127.0.0.1:5432/test",
        description="PostgreSQL URL (SQLAlchemy form); the record of truth for every job.",
    )
    database_schema: str = Field(
        "heimdall",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="PostgreSQL schema holding the service's tables (created if missing).",
    )
    redis_prefix: str = Field("heimdall:", description="Prefix of every Redis key written.")
    queue: str = Field("heimdall.inference", description="RabbitMQ queue of the inference tasks.")
    start_wait_s: float = Field(
        60.0,
        ge=0,
        le=WAIT_MAX_S,
        description="How long the worker, the shim and Flower wait at start for a service that "
        "does not answer (restarting, failing over) before exiting with status 2; 0: at once.",
    )

    # --- model ----------------------------------------------------------------------------
    model_source: Literal["dir", "registry"] = Field(
        "dir",
        description="Where the model comes from: 'dir' (model_dir) or 'registry' (MLflow, "
        "the version under model_alias).",
    )
    model_dir: Path = Field(
        DEFAULT_MODEL_DIR,
        description="Folder holding model.onnx and its metadata (model.json); with the registry, "
        "the model registered when the registry is empty.",
    )
    model_name: str = Field("heimdall-localization", description="Registered model name.")
    model_alias: str = Field("champion", description="Registry alias the workers serve.")
    data_dir: Path = Field(Path("var"), description="Local data (embedded registry, model cache).")
    registry_uri: str = Field(
        "",
        description="MLflow registry store, e.g. postgresql://... or http://mlflow:5000; "
        "empty: an embedded SQLite registry in data_dir.",
    )
    registry_artifacts: str = Field(
        "",
        description="Where new versions' files are stored (s3://..., a folder every worker "
        "reads, or empty: data_dir/mlflow/artifacts; with an MLflow server, its artifact proxy).",
    )
    onnx_intra_op_threads: int = Field(
        1, ge=1, le=THREADS_MAX, description="onnxruntime intra-op threads per worker process."
    )
    onnx_inter_op_threads: int = Field(
        1, ge=1, le=THREADS_MAX, description="onnxruntime inter-op threads per worker process."
    )
    retain_freed_mb: int = Field(
        256,
        ge=0,
        le=1024,
        description="Freed memory (MB) a worker or shim process keeps for its next batches and "
        "uploads (glibc; see serving/memory.py); 0: the C library's defaults.",
    )

    # --- worker ---------------------------------------------------------------------------
    worker_concurrency: int = Field(
        2, ge=1, le=PROCESSES_MAX, description="Pool processes of `heimdall-inference worker`."
    )
    worker_batch_size: int = Field(
        64,
        ge=1,
        le=256,
        description="Most jobs a worker process takes at once (one start statement, one Redis "
        "fetch, one ONNX run, one result statement for them all). A job never waits for company: "
        "batches form only while every process is busy. 1 turns batching off.",
    )
    worker_batch_mb: int = Field(
        24,
        ge=1,
        description="Most capture data (MB) in one batch: large captures make smaller batches "
        "(a capture larger than this still runs, alone).",
    )
    worker_loglevel: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    task_max_retries: int = Field(
        5,
        ge=0,
        description="Retries, with backoff, of a job in hand after a transient store error "
        "before its message goes back to the queue (never for bad input).",
    )
    max_deliveries: int = Field(
        5,
        ge=1,
        le=1000,
        description="Delivery limit of the queue: after this many deliveries that ended without "
        "an answer (the worker died), the message goes to the dead-letter queue and its job fails.",
    )
    task_soft_time_limit_s: float = Field(
        30.0,
        ge=0,
        le=WAIT_MAX_S,
        description="A job still running after this long is stopped and failed with the reason "
        "(0: no soft limit). The slowest accepted capture takes well under a second.",
    )
    task_time_limit_s: float = Field(
        60.0,
        gt=0,
        le=WAIT_MAX_S,
        description="Hard limit: a job still running after this long (stuck in a model or a "
        "store call) has its worker process replaced and is failed with the reason.",
    )
    outbox_grace_s: float = Field(
        30.0,
        gt=0,
        description="A submission whose task was not confirmed published this long after it was "
        "recorded (its shim died mid-way) is published by a worker, or failed if its capture is "
        "gone.",
    )
    relay_interval_s: float = Field(
        5.0,
        ge=0.1,
        le=WAIT_MAX_S,
        description="How often a worker looks for such submissions (and prunes, hourly).",
    )
    stuck_after_s: float = Field(
        600.0,
        gt=0,
        le=YEAR_S,
        description="A job not final this long after submission counts as stuck (metric, "
        "alert and `heimdall-inference jobs stuck`).",
    )
    retention_days: float = Field(
        14.0,
        ge=0,
        le=RETENTION_DAYS_MAX,
        description="Final jobs (and their inference logs) older than this are deleted by the "
        "workers, hourly; 0 keeps them forever. `heimdall-inference jobs prune` does it by hand.",
    )
    database_statement_timeout_s: float = Field(
        15.0,
        ge=0.1,
        le=POSTGRESQL_TIMEOUT_MAX_S,
        description="Longest a PostgreSQL statement may run before it is cancelled; a server "
        "that answers nothing (paused, stalled) is given up on 2 s later.",
    )
    publish_confirm_timeout_s: float = Field(
        5.0, ge=0.1, le=WAIT_MAX_S, description="Longest a publish waits for RabbitMQ's confirm."
    )
    broker_heartbeat_s: int = Field(
        10,
        ge=0,
        le=3600,
        description="AMQP heartbeat of a worker's connection to RabbitMQ: a broker that stops "
        "answering is given up on after about two, by both sides; 0: none.",
    )

    worker_metrics_port: int = Field(
        9808, ge=0, le=65535, description="Port of the worker's Prometheus metrics; 0 disables."
    )

    admin_token: SecretStr = Field(
        SecretStr(""),
        description="A bearer token with the admin role, besides api_keys; empty: none.",
    )
    api_keys: list[ApiKey] = Field(
        default_factory=list,
        description="API keys of the HTTP shim, a JSON list of {name, key or key_sha256, role, "
        "tenant, rate_limit}; empty: submitting and polling need no key.",
    )
    api_rate_limit: str = Field(
        "50/second",
        description="Requests allowed per API key (all endpoints together) unless the key says.",
    )

    # --- Flower -----------------------------------------------------------------------------
    flower_address: str = Field("127.0.0.1", description="Address Flower listens on.")
    flower_port: int = Field(5555, ge=1, le=65535, description="Port Flower listens on.")
    flower_basic_auth: SecretStr = Field(
        SecretStr(""),
        description="'user:password' for Flower; empty: a password is generated and printed.",
    )

    # --- lifetimes ------------------------------------------------------------------------
    blob_ttl_s: int = Field(
        86_400,
        ge=60,
        le=YEAR_S,
        description="How long a submitted capture's IQ bytes are kept in Redis awaiting a worker.",
    )
    result_ttl_s: int = Field(
        3_600, ge=1, le=YEAR_S, description="How long a job result stays in Redis."
    )
    cache_ttl_s: int = Field(
        3_600, ge=0, le=YEAR_S, description="Result cache lifetime for identical captures; 0: none."
    )

    # --- limits ---------------------------------------------------------------------------
    max_body_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1024,
        description="Largest accepted request body (HTTP 413 above), and the most the files of "
        "a TDoA set may add up to through the producer client. The default takes 12 "
        "receivers' 30 s at 20.25 kHz (29.5 MB; 17.5 MB at 12 kHz).",
    )
    max_samples_per_receiver: int = Field(
        480_000, ge=1_000, description="Longest accepted capture (samples a row; 2.5 s at 192 kHz)."
    )
    max_batch_captures: int = Field(
        32, ge=1, description="Most captures in one POST /predict-batch (HTTP 413 above)."
    )
    tdoa_max_receivers: int = Field(
        12,
        ge=3,
        le=32,
        description="Most receivers (WAV files) in one TDoA submission. At most 32: when one "
        "receiver's time is off, a worker locates the set without each receiver in turn; 30 s "
        "of 32 take about 10 s of one core then, 64 about a minute, past the job time limit.",
    )
    tdoa_min_overlap_s: float = Field(
        2.0, gt=0, description="Shortest GPS time span all of a TDoA submission's files share."
    )
    min_sample_rate_hz: float = Field(1_000.0, gt=0, description="Lowest accepted sample rate.")
    max_sample_rate_hz: float = Field(
        10_000_000.0, gt=0, description="Highest accepted sample rate."
    )

    # --- HTTP shim ------------------------------------------------------------------------
    api_host: str = Field("127.0.0.1", description="Address the HTTP shim listens on (IPv6: ::1).")
    api_port: int = Field(8003, ge=1, le=65535, description="Port the HTTP shim listens on.")
    api_public_url: str = Field(
        "",
        description="Where other hosts reach the HTTP shim (http://host:port, or a proxy's "
        "https://host/path), as its processes announce it in Redis for `heimdall-inference "
        "check`; empty: the address it listens on, this host's name where that is every address.",
    )
    api_workers: int = Field(
        2, ge=1, le=PROCESSES_MAX, description="gunicorn worker processes of the shim."
    )
    max_wait_s: float = Field(
        30.0,
        gt=0,
        le=300,
        description="Longest a client may wait on GET /jobs/<id>?wait=S for its job to finish.",
    )
    api_threads: int = Field(
        16,
        ge=1,
        le=THREADS_MAX,
        description="Threads per shim process (gunicorn gthread) for requests' work: while one "
        "waits on PostgreSQL, Redis or RabbitMQ, another runs. 1 (and api_max_waits 0): sync.",
    )
    api_max_waits: int = Field(
        64,
        ge=0,
        le=THREADS_MAX,
        description="Waits for jobs (?wait=) a shim process holds at once, on threads of their "
        "own beside api_threads; one more answers at once (Retry-After: 1). 0: none held.",
    )
    api_body_stall_s: float = Field(
        30.0, gt=0, le=WAIT_MAX_S, description="Longest a request body may stop arriving (408)."
    )
    api_access_log: bool = Field(
        False,
        description="Log every HTTP request of the shim to stdout (gunicorn's access log); off by "
        "default: at hundreds of requests a second it costs a twentieth of the shim's CPU.",
    )

    @field_validator("api_rate_limit")
    @classmethod
    def _valid_rate_limit(cls, value: str) -> str:
        return check_rate_limit(value)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        for rule in RULES:
            if (reason := rule(self)) is not None:
                raise ValueError(reason)
        return self

    @field_validator(*CHECKED)
    @classmethod
    def _checked(cls, value: str, info: ValidationInfo) -> str:
        return checked(str(info.field_name), value)

    @property
    def resolved_registry_uri(self) -> str:
        return (
            self.registry_uri or f"sqlite:///{(self.data_dir / 'mlflow' / 'mlflow.db').resolve()}"
        )

    @property
    def resolved_registry_artifacts(self) -> str | None:
        if self.registry_artifacts:
            return self.registry_artifacts
        uri = self.registry_uri
        if uri.startswith(("http://", "https://")) or (uri and "://" not in uri):
            return None  # a tracking server keeps the files itself (its artifact proxy)
        # A database store has no place of its own for files: MLflow's default is ./mlruns,
        # wherever the command happened to run.
        return (self.data_dir / "mlflow" / "artifacts").resolve().as_uri()


def load_settings(**overrides: object) -> Settings:
    """Build the settings from the environment; keyword overrides win (tests pass literals)."""
    return Settings(**overrides)  # type: ignore[arg-type]
