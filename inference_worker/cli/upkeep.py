"""The ``jobs`` command: stuck jobs (list, requeue, fail) and retention (prune)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from inference_worker.cli.arguments import count, fail, number
from inference_worker.settings import Settings
from inference_worker.settings_checks import RETENTION_DAYS_MAX, YEAR_S


def add_parser(sub: Any) -> None:
    jobs = sub.add_parser(
        "jobs",
        help="operators' tools: list stuck jobs, requeue or fail them, prune old jobs",
        description="stuck [--older-than S] | requeue JOB_ID... | fail JOB_ID... --reason TEXT "
        "| prune [--older-than-days D]; requeue and fail take --all-stuck instead of ids",
    )
    jobs.add_argument("action", choices=["stuck", "requeue", "fail", "prune"])
    jobs.add_argument("job_ids", nargs="*", help="jobs to requeue or fail")
    jobs.add_argument(
        "--older-than",
        type=number(0.0, YEAR_S),
        help="seconds since submission that make a job stuck (default HEIMDALL_STUCK_AFTER_S)",
    )
    jobs.add_argument("--all-stuck", action="store_true", help="requeue or fail every stuck job")
    jobs.add_argument(
        "--limit",
        type=count(1),
        default=1_000,
        help="with stuck: list at most this many, the oldest (default 1000)",
    )
    jobs.add_argument("--reason", help="with fail: the error recorded on the job")
    jobs.add_argument(
        "--older-than-days",
        type=number(0.0, RETENTION_DAYS_MAX, above=True),
        help="with prune: delete final jobs older than this (default HEIMDALL_RETENTION_DAYS)",
    )
    jobs.add_argument("--json", action="store_true", help="with stuck: print JSON")
    jobs.set_defaults(func=cmd_jobs)


def cmd_jobs(settings: Settings, args: argparse.Namespace) -> None:
    import sqlalchemy.exc

    from inference_worker.serving import recovery
    from inference_worker.storage.errors import (
        STORE_ERRORS,
        describe_failure,
        describe_missing_schema,
    )

    older_than = args.older_than if args.older_than is not None else settings.stuck_after_s
    stores = recovery.open_stores(settings, role="heimdall-cli")
    try:
        if args.action == "stuck":
            found = recovery.stuck_jobs(stores, older_than, args.limit)
            print_stuck(found, older_than, args.json)
            total = stores.maintenance.count_not_final(older_than) if found else 0
            if total > len(found):  # on stderr: the JSON on stdout stays a list
                print(
                    f"the oldest {len(found)} of {total} stuck jobs are listed (--limit); "
                    "requeue and fail take --all-stuck for all of them",
                    file=sys.stderr,
                )
        elif args.action == "prune":
            days = args.older_than_days
            days = settings.retention_days if days is None else days
            if days <= 0:
                fail("nothing to prune: give --older-than-days (retention is off)")
            deleted = stores.maintenance.prune(days, progress=PruneProgress())
            print(f"deleted {deleted} final job(s) older than {days:g} days")
        else:
            job_ids = list(args.job_ids)
            if args.all_stuck:
                job_ids += stores.maintenance.not_final_ids(older_than)
            if not job_ids:
                fail(f"jobs {args.action} needs job ids or --all-stuck")
            if args.action == "requeue":
                changed = requeue(settings, stores, job_ids)
            else:
                if not args.reason:
                    fail("jobs fail needs --reason (it is recorded on each job)")
                reason = f"failed by an operator: {args.reason}"
                changed = 0
                for job_id in job_ids:
                    done = recovery.record_failure(stores, job_id, reason, settings.result_ttl_s)
                    changed += done
                    print(f"{job_id}: {'failed' if done else 'not changed (unknown or final)'}")
            if changed < len(job_ids):  # scripts learn that some job was left as it was
                raise SystemExit(1)
    except STORE_ERRORS as exc:
        urls = {"database_url": settings.database_url, "redis_url": settings.redis_url}
        fail(describe_failure(exc, **urls))
    except sqlalchemy.exc.ProgrammingError as exc:
        missing = describe_missing_schema(exc, settings.database_schema)
        if missing is None:
            raise
        fail(missing)
    finally:
        stores.redis.client.close()
        stores.jobs.engine.dispose()


def requeue(settings: Settings, stores: Any, job_ids: list[str]) -> int:
    """Publish each job's task again, printing what happened to each; returns how many were."""
    from inference_worker.serving import recovery
    from inference_worker.storage.errors import STORE_ERRORS
    from tasks.alarm import BrokerBlocked
    from tasks.app import create_celery, publisher
    from tasks.intake import UNAVAILABLE_ERRORS
    from tasks.publish_failures import describe_broker_refusal

    app = create_celery(settings.broker_url, settings.queue, delivery_limit=settings.max_deliveries)
    publish = publisher(app, settings.queue, settings.publish_confirm_timeout_s)
    published = 0
    try:
        for job_id in job_ids:
            try:
                outcome = recovery.requeue(stores, job_id, publish)
            except STORE_ERRORS:
                raise
            except UNAVAILABLE_ERRORS as exc:  # the broker: the rest would meet it too
                refusal = describe_broker_refusal(exc)
                if isinstance(exc, BrokerBlocked) and exc.sent:
                    print(f"{job_id}: sent, not confirmed: {refusal}; it runs once that is over")
                else:
                    print(f"{job_id}: not published: {refusal}")
                break
            published += outcome == recovery.PUBLISHED_AGAIN
            print(f"{job_id}: {outcome}")
    finally:
        app.close()
    return published


def print_stuck(found: list[dict[str, Any]], older_than: float, as_json: bool) -> None:
    if as_json:
        print(json.dumps(found, indent=2))
        return
    if not found:
        print(f"no job is unfinished {older_than:g} s after submission")
        return
    print(f"{'job':<40} {'status':<8} {'age':>8} {'published':>9} {'capture':>7} {'starts':>6}")
    for job in found:
        print(
            f"{job['job_id']:<40} {job['status']:<8} {job['age_s']:>7.0f}s "
            f"{'yes' if job['published'] else 'no':>9} "
            f"{'yes' if job['capture_present'] else 'gone':>7} {job['deliveries_started']:>6}"
        )
    print(
        "published: RabbitMQ confirmed the task; capture: its IQ is still in Redis; starts: how "
        "often a worker began it. Requeue jobs whose capture is present; fail the others."
    )


class PruneProgress:
    """Says on stderr, at most once a second, how many jobs a long prune has deleted so far
    (a retention first set on a large table deletes in batches for minutes)."""

    def __init__(self, every_s: float = 1.0) -> None:
        self.started = self.shown = time.monotonic()
        self.every_s = every_s

    def __call__(self, deleted: int) -> None:
        now = time.monotonic()
        if now - self.shown >= self.every_s:
            self.shown = now
            rate = deleted / max(now - self.started, 1e-9)
            print(f"  deleted {deleted} so far ({rate:.0f} a second)", file=sys.stderr, flush=True)
