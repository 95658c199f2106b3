"""Queries that keep the job table honest and bounded: submissions whose task was never
confirmed (the outbox), jobs that are not final long after submission, and retention."""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Engine, RowMapping

from inference_worker.storage.schema import jobs
from inference_worker.storage.statuses import FINAL_STATUSES, QUEUED

NOT_FINAL = ("queued", "running")


def _older_than(seconds: float) -> sa.ColumnElement[bool]:
    return jobs.c.created_at < sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, seconds)


def _not_final_since(seconds: float) -> sa.ColumnElement[bool]:
    """Still queued or running ``seconds`` after submission: what makes a job stuck."""
    return sa.and_(jobs.c.status.in_(NOT_FINAL), _older_than(seconds))


class JobMaintenance:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextmanager
    def exclusively(self, name: str) -> Iterator[bool]:
        """Hold a PostgreSQL advisory lock named ``name`` for the block, if no one else does.

        Yields whether this caller got it (several workers run the same upkeep; one at a time
        does it).
        """
        key = zlib.crc32(f"heimdall:{name}".encode())
        with self.engine.connect() as connection:
            got = bool(
                connection.execute(sa.select(sa.func.pg_try_advisory_lock(key))).scalar_one()
            )
            connection.commit()
            try:
                yield got
            finally:
                if got:
                    connection.execute(sa.select(sa.func.pg_advisory_unlock(key)))
                    connection.commit()

    def unconfirmed(self, older_than_s: float, limit: int = 200) -> list[RowMapping]:
        """Queued jobs whose task message was never confirmed published, oldest first."""
        statement = (
            sa.select(jobs.c.job_id, jobs.c.message, jobs.c.created_at)
            .where(
                jobs.c.status == QUEUED,
                jobs.c.published_at.is_(None),
                _older_than(older_than_s),
            )
            .order_by(jobs.c.created_at)
            .limit(limit)
        )
        with self.engine.connect() as connection:
            return list(connection.execute(statement).mappings())

    def not_final(self, older_than_s: float, limit: int) -> list[RowMapping]:
        """Jobs submitted more than ``older_than_s`` ago that are still queued or running."""
        statement = (
            sa.select(
                jobs.c.job_id,
                jobs.c.status,
                jobs.c.created_at,
                jobs.c.started_at,
                jobs.c.published_at,
                jobs.c.attempts,
                jobs.c.message,
                (sa.func.extract("epoch", sa.func.now() - jobs.c.created_at)).label("age_s"),
            )
            .where(_not_final_since(older_than_s))
            .order_by(jobs.c.created_at)
            .limit(limit)
        )
        with self.engine.connect() as connection:
            return list(connection.execute(statement).mappings())

    def not_final_ids(self, older_than_s: float) -> list[str]:
        """The ids of every job submitted more than ``older_than_s`` ago that is still queued
        or running, oldest first (no limit: what ``--all-stuck`` acts on)."""
        statement = (
            sa.select(jobs.c.job_id)
            .where(_not_final_since(older_than_s))
            .order_by(jobs.c.created_at)
        )
        with self.engine.connect() as connection:
            return list(connection.execute(statement).scalars())

    def count_not_final(self, older_than_s: float) -> int:
        statement = sa.select(sa.func.count()).where(_not_final_since(older_than_s))
        with self.engine.connect() as connection:
            return int(connection.execute(statement).scalar_one())

    def prune(
        self,
        older_than_days: float,
        batch: int = 5_000,
        max_batches: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Delete final jobs (their inference logs go with them) that finished more than
        ``older_than_days`` ago, a batch at a time; never a job that is not final. Returns how
        many were deleted.

        ``max_batches`` bounds one call (the workers' upkeep deletes a bounded share a round);
        by default it goes on until none is left. ``progress`` hears the count deleted so far after
        each batch."""
        seconds = older_than_days * 86_400.0
        cutoff = sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, seconds)
        doomed = (
            sa.select(jobs.c.job_id)
            .where(jobs.c.status.in_(FINAL_STATUSES), jobs.c.finished_at < cutoff)
            .limit(batch)
            .scalar_subquery()
        )
        deleted = 0
        for _ in itertools.count() if max_batches is None else range(max_batches):
            with self.engine.begin() as connection:
                count = connection.execute(sa.delete(jobs).where(jobs.c.job_id.in_(doomed)))
            deleted += count.rowcount
            if progress is not None:
                progress(deleted)
            if count.rowcount < batch:
                break
        return deleted
