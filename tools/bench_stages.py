"""What every stage of ``tools/bench_throughput.py`` runs on: a queue, Redis prefix and
PostgreSQL schema of its own (made ready, then removed), and the count of its jobs read from
the stage's table."""

from __future__ import annotations

import uuid

from inference_worker.cli import bootstrap
from inference_worker.settings import Settings


def own_settings(base: Settings, stage: str) -> Settings:
    tag = f"{stage}{uuid.uuid4().hex[:6]}"
    return base.model_copy(
        update={
            "queue": f"heimdall.bench.{tag}",
            "redis_prefix": f"heimdall-bench:{tag}:",
            "database_schema": f"bench_{tag}",
            "worker_metrics_port": 0,
            "cache_ttl_s": 0,  # every capture is new here; duplicates are measured elsewhere
        }
    )


def drop(settings: Settings) -> None:
    import kombu
    import sqlalchemy as sa

    from tasks.app import dead_letter_queue_name

    with kombu.Connection(settings.broker_url) as connection:
        for name in (settings.queue, dead_letter_queue_name(settings.queue)):
            connection.default_channel.queue_delete(name)
    empty_prefix(settings)
    engine = sa.create_engine(settings.database_url, poolclass=sa.pool.NullPool)
    with engine.begin() as connection:
        connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{settings.database_schema}" CASCADE'))
    engine.dispose()


def empty_prefix(settings: Settings) -> None:
    """Delete every Redis key under the stage's own prefix (captures no worker took, results)."""
    import redis

    client = redis.Redis.from_url(settings.redis_url)
    try:
        for key in client.scan_iter(match=f"{settings.redis_prefix}*", count=1000):
            client.delete(key)
    finally:
        client.close()


def prepare(settings: Settings) -> None:
    bootstrap.migrate_database(settings)
    bootstrap.declare_queues(settings)
    bootstrap.announce_model(settings)


class JobCounts:
    """Reads the stage's succeeded jobs over one pooled connection. Polling must cost the
    machine next to nothing: a new engine and connection per poll, with an aggregate over the
    jobs' JSON timings, cost about 11 ms of CPU (PostgreSQL's and this process's) every 0.1 s,
    taken from the cores the worker path is measured on."""

    def __init__(self, settings: Settings) -> None:
        from inference_worker.storage.engine import engine_for

        self.engine = engine_for(settings, pool_size=1)

    def __enter__(self) -> JobCounts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.engine.dispose()

    def done(self) -> int:
        """How many jobs succeeded so far (counted on the status index)."""
        import sqlalchemy as sa

        with self.engine.connect() as connection:
            query = "SELECT count(*) FROM jobs WHERE status = 'succeeded'"
            return int(connection.execute(sa.text(query)).scalar_one())

    def summary(self) -> tuple[int, float, float]:
        """Jobs succeeded, their rate from the first start to the last finish, and the mean
        size of the batches they ran in (as each job's timings record it)."""
        import sqlalchemy as sa

        with self.engine.connect() as connection:
            count, first, last, batch = connection.execute(
                sa.text(
                    "SELECT count(*), min(started_at), max(finished_at),"
                    " avg((timings->>'batch_size')::float8) FROM jobs WHERE status = 'succeeded'"
                )
            ).one()
        if not count:
            return 0, 0.0, 0.0
        return count, count / max((last - first).total_seconds(), 1e-9), batch or 0.0


def ratio_to(bare: float | None, value: float) -> str:
    """`` = 0.67x the bare pipeline`` when the bare pipeline ran in this run, else nothing."""
    return f" = {value / bare:.2f}x the bare pipeline" if bare else ""
