"""The shim's yardstick: the least a Flask handler under gunicorn can do to accept a capture.

``POST /predict`` reads the ``.npy`` body, checks it (3 rows of finite complex64), hashes it
(sha256), inserts the job's row with psycopg2 and commits, stores the capture in Redis with a
TTL and publishes a JSON task with a publisher confirm, then answers ``202``: the same work and
round trips as the service's shim, with none of its checks of keys, limits, idempotent ids or
the model's receivers, no metrics and no outbox. The throughput benchmark serves it with the
shim's own gunicorn settings (processes, threads) and meters its CPU per accepted submission,
so the shim's figure can be read against what the same machine needs for the bare work on the
same day (``--stages shim,minimal``).

Configured by the environment: ``MINIMAL_DATABASE_URL`` (libpq form), ``MINIMAL_SCHEMA`` (its
table is created there), ``MINIMAL_REDIS_URL``, ``MINIMAL_REDIS_PREFIX``, ``MINIMAL_BROKER_URL``
and ``MINIMAL_QUEUE`` (declared beforehand).

    gunicorn -k gthread -w 2 --threads 16 tools.minimal_shim:app
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import uuid

import kombu
import numpy as np
import psycopg2
import redis
from flask import Flask, jsonify, request

SCHEMA = os.environ.get("MINIMAL_SCHEMA", "minimal_shim")
INSERT_SQL = (
    f'INSERT INTO "{SCHEMA}".jobs (job_id, status, sha256, sample_rate_hz, frequency_mhz, '
    "receivers) VALUES (%s, 'queued', %s, %s, %s, %s)"
)

app = Flask(__name__)
_redis = redis.Redis.from_url(os.environ.get("MINIMAL_REDIS_URL", "redis://127.0.0.1:6379/0"))
_local = threading.local()


def libpq_form(database_url: str) -> str:
    """A SQLAlchemy database URL (``postgresql+psycopg2://...``) as libpq reads it."""
    from sqlalchemy.engine import make_url

    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


def create_table(database_url: str, schema: str) -> None:
    """The handler's one table, in ``schema`` (run once, before gunicorn starts)."""
    connection = psycopg2.connect(database_url)
    with connection, connection.cursor() as cursor:
        cursor.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        cursor.execute(
            f'CREATE TABLE IF NOT EXISTS "{schema}".jobs (job_id text PRIMARY KEY, status text '
            "NOT NULL, sha256 text NOT NULL, sample_rate_hz double precision NOT NULL, "
            "frequency_mhz double precision NOT NULL, receivers text NOT NULL, created_at "
            "timestamptz NOT NULL DEFAULT now())"
        )
    connection.close()


def _connections() -> tuple[psycopg2.extensions.connection, kombu.messaging.Producer]:
    """This thread's database connection and confirming producer, opened on first use."""
    if getattr(_local, "database", None) is None:
        _local.database = psycopg2.connect(os.environ["MINIMAL_DATABASE_URL"])
        _local.broker = kombu.Connection(
            os.environ["MINIMAL_BROKER_URL"], transport_options={"confirm_publish": True}
        )
        _local.producer = kombu.Producer(_local.broker.channel())
    return _local.database, _local.producer


def close_connections() -> None:
    """Close this thread's connections (gunicorn's processes just exit)."""
    if getattr(_local, "database", None) is not None:
        _local.database.close()
        _local.broker.release()
        _local.database = None
    _redis.close()


@app.get("/health")
def health():
    return jsonify(status="ok")


@app.post("/predict")
def predict():
    body = request.get_data()
    try:
        iq = np.load(io.BytesIO(body), allow_pickle=False)
    except ValueError as exc:
        return jsonify(error=f"not a .npy array: {exc}"), 400
    if iq.dtype != np.complex64 or iq.ndim != 2 or iq.shape[0] != 3:
        return jsonify(error="expected a (3, n) complex64 array"), 400
    if not np.isfinite(iq.view(np.float32)).all():
        return jsonify(error="non-finite samples"), 400
    digest = hashlib.sha256(body).hexdigest()
    job_id = request.args.get("job_id") or uuid.uuid4().hex
    try:
        rate = float(request.args["sample_rate_hz"])
        frequency = float(request.args["frequency_mhz"])
        receivers = request.args["receivers"]
    except (KeyError, ValueError):
        return jsonify(error="sample_rate_hz, frequency_mhz and receivers are required"), 400
    database, producer = _connections()
    with database.cursor() as cursor:
        cursor.execute(INSERT_SQL, (job_id, digest, rate, frequency, receivers))
    database.commit()
    blob_key = f"{os.environ.get('MINIMAL_REDIS_PREFIX', 'minimal:')}iq:{job_id}"
    _redis.set(blob_key, body, ex=3600)
    task = {
        "job_id": job_id,
        "blob_key": blob_key,
        "sha256": digest,
        "sample_rate_hz": rate,
        "frequency_mhz": frequency,
        "receivers": receivers.split(","),
    }
    producer.publish(
        json.dumps(task),
        routing_key=os.environ["MINIMAL_QUEUE"],
        content_type="application/json",
        content_encoding="utf-8",
        delivery_mode=2,
    )
    return jsonify(job_id=job_id, status="queued"), 202
