"""Finishing what a dying process left half-done, and the operators' tools for stuck jobs.

- The relay: a shim that died after it recorded a job but before RabbitMQ confirmed its task
  leaves a queued row whose message was never confirmed. After ``outbox_grace_s`` a worker
  publishes that message (a second copy is harmless: one job, one recorded result), or fails the
  job with the reason when its capture is gone from Redis.
- Stuck jobs: what is known of a job that is not final long after submission (published? capture
  present? deliveries so far?), and requeueing or failing it by hand.
- Retention: final jobs older than ``retention_days`` are deleted, hourly.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from inference_worker.settings import Settings
from inference_worker.storage.database import JobStore
from inference_worker.storage.engine import UPKEEP_POOL, engine_for
from inference_worker.storage.errors import STORE_ERRORS, first_line
from inference_worker.storage.maintenance import JobMaintenance
from inference_worker.storage.redis_store import RedisStore, connect
from inference_worker.storage.statuses import FINAL_STATUSES
from inference_worker.storage.views import job_view
from tasks.contract import LocateMessage
from tasks.intake import UNAVAILABLE_ERRORS
from tasks.outbox import stored_message
from tasks.publish_failures import describe_broker_refusal

log = logging.getLogger(__name__)

Publish = Callable[[LocateMessage], None]
CAPTURE_GONE = (
    "the submission was interrupted before its task was published, and its capture is no "
    "longer in Redis; submit the capture again under a new job id (this one stays failed)"
)
"""Why the relay fails such a job. Resubmitted under the same id, the failed job is what
comes back (``created: false``), as for any job id in use."""
PRUNE_EVERY_S = 3_600.0
PRUNE_BATCH = 5_000
PRUNE_BATCHES_A_ROUND = 20
"""An upkeep round deletes at most this many batches (~1 s here), so the relay is not held up;
while more are left it goes on the next round instead of an hour later, so retention keeps up
with any rate (about 100 000 jobs every ``relay_interval_s``)."""
PUBLISHED_AGAIN = "published again"
"""What :func:`requeue` answers when it published the job's task again."""


@dataclass(frozen=True)
class Stores:
    jobs: JobStore
    redis: RedisStore
    maintenance: JobMaintenance


def open_stores(settings: Settings, role: str) -> Stores:
    engine = engine_for(settings, role=role, pool_size=UPKEEP_POOL)
    redis = RedisStore(connect(settings.redis_url), settings.redis_prefix)
    return Stores(JobStore(engine), redis, JobMaintenance(engine))


def record_failure(stores: Stores, job_id: str, reason: str, result_ttl_s: int) -> bool:
    """Fail a job that is not final yet, with ``reason``; True if this call did."""
    final = stores.jobs.fail(job_id, reason)
    if final is None:
        return False
    stores.redis.put_result(job_id, job_view(final), result_ttl_s)
    return True


def republish(stores: Stores, message: LocateMessage, publish: Publish) -> None:
    publish(message)
    stores.jobs.mark_published(message.job_id)


@dataclass
class RelayReport:
    published: int = 0
    failed: int = 0
    skipped: int = 0


def relay_unconfirmed(
    stores: Stores, publish: Publish, grace_s: float, result_ttl_s: int
) -> RelayReport:
    """Publish (or fail) the submissions whose task stayed unconfirmed for ``grace_s``."""
    report = RelayReport()
    for row in stores.maintenance.unconfirmed(grace_s):
        message = stored_message(row)
        if message is None:  # a row of an older release: left to the operator
            report.skipped += 1
        elif not stores.redis.has_blob(message.blob_key):
            report.failed += record_failure(stores, row["job_id"], CAPTURE_GONE, result_ttl_s)
        else:
            republish(stores, message, publish)
            report.published += 1
            log.warning("job %s: its task was never confirmed; published it again", row["job_id"])
    return report


def stuck_jobs(stores: Stores, older_than_s: float, limit: int) -> list[dict[str, Any]]:
    """The oldest ``limit`` jobs not final ``older_than_s`` after submission, with what is known
    about each (``maintenance.count_not_final`` says how many there are in all)."""
    found = []
    for row in stores.maintenance.not_final(older_than_s, limit):
        message = stored_message(row)
        blob_key = message.blob_key if message else stores.redis.earlier_blob_key(row["job_id"])
        found.append(
            {
                "job_id": row["job_id"],
                "status": row["status"],
                "age_s": round(float(row["age_s"]), 1),
                "published": row["published_at"] is not None,
                "capture_present": stores.redis.has_blob(blob_key),
                "deliveries_started": row["attempts"],
                "requeueable": message is not None,
            }
        )
    return found


def requeue(stores: Stores, job_id: str, publish: Publish) -> str:
    """Publish a job's task message again; returns what happened, in words."""
    row = stores.jobs.get(job_id)
    if row is None:
        return "no such job"
    if row["status"] in FINAL_STATUSES:
        return f"already {row['status']}"
    message = stored_message(row)
    if message is None:
        return "its row holds no task message (an older release): fail it and resubmit"
    if not stores.redis.has_blob(message.blob_key):
        return "its capture is gone from Redis: fail it and resubmit the capture"
    republish(stores, message, publish)
    return PUBLISHED_AGAIN


class Upkeep:
    """A thread in each worker's main process: the relay every ``relay_interval_s`` and the
    retention every hour (every round while old jobs are left over). Workers take turns through
    an advisory lock."""

    def __init__(self, settings: Settings, stores: Callable[[], Stores], publish: Publish) -> None:
        self.settings = settings
        self.stores = stores
        self.publish = publish
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pruned_at = -float("inf")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="heimdall-upkeep", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.settings.relay_interval_s):
            try:
                self.run_once()
            except STORE_ERRORS as exc:
                log.warning("upkeep postponed, a store is unavailable: %s", first_line(exc))
            except UNAVAILABLE_ERRORS as exc:  # the broker: down, or blocking in an alarm
                log.warning("upkeep postponed, %s: %s", describe_broker_refusal(exc), exc)
            except Exception:  # the thread must outlive any bug in one round
                log.exception("upkeep round failed")

    def run_once(self) -> None:
        settings = self.settings
        stores = self.stores()
        with stores.maintenance.exclusively("upkeep") as mine:
            if not mine:
                return
            report = relay_unconfirmed(
                stores, self.publish, settings.outbox_grace_s, settings.result_ttl_s
            )
            if report.published or report.failed:
                log.warning("relay: %s", report)
            now = time.monotonic()
            if settings.retention_days and now - self._pruned_at > PRUNE_EVERY_S:
                deleted = stores.maintenance.prune(
                    settings.retention_days, PRUNE_BATCH, PRUNE_BATCHES_A_ROUND
                )
                caught_up = deleted < PRUNE_BATCH * PRUNE_BATCHES_A_ROUND
                if caught_up:  # else the rest goes in the next round
                    self._pruned_at = now
                if deleted:
                    log.info(
                        "retention: deleted %d jobs older than %g days%s",
                        deleted,
                        settings.retention_days,
                        "" if caught_up else "; more in the next round",
                    )
