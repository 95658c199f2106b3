"""The SQL every job runs, at the driver's level (psycopg2's ``%(name)s`` parameters): JSON values
travel as text and are cast in the statement, where SQLAlchemy's statement compilation cost more
CPU than the statements themselves."""

from __future__ import annotations

from inference_worker.storage.statuses import FINAL_STATUSES

FINAL_LIST = ", ".join(f"'{status}'" for status in FINAL_STATUSES)

# A job's creation time is the one it was given (a producer's clock) unless that lies ahead of
# the database's: least() skips a NULL, and takes the database's now() over a time to come, so
# a queue wait (its start less its creation, on the database's clock) is never negative.

# One per submission.
CREATE = (
    "INSERT INTO jobs (job_id, status, created_at, capture_time, frequency_mhz, sample_rate_hz,"
    " n_samples, receivers, iq_sha256, batch_id, tenant, message, published_at)"
    " VALUES (%(job_id)s, 'queued', least(%(created_at)s, now()), %(capture_time)s,"
    " %(frequency_mhz)s, %(sample_rate_hz)s, %(n_samples)s, %(receivers)s::jsonb,"
    " %(iq_sha256)s, %(batch_id)s, %(tenant)s, %(message)s::jsonb,"
    " CASE WHEN %(published)s THEN now() END)"
    " ON CONFLICT (job_id) DO NOTHING"
    # Not the message: the caller has it, and parsing it back costs.
    " RETURNING job_id, status, tenant, iq_sha256, published_at"
)
# A submission answered from the result cache: the row written final at once, with its log row,
# in one statement (its message kept, never published: it says what the job asked, which a
# resubmission with the job's id must ask too).
CREATE_ANSWERED = (
    "WITH made AS (INSERT INTO jobs (job_id, status, created_at, finished_at, capture_time,"
    " frequency_mhz, sample_rate_hz, n_samples, receivers, iq_sha256, batch_id, tenant,"
    " model_version, cache_hit, result, timings, message)"
    " VALUES (%(job_id)s, 'succeeded', least(%(created_at)s, now()), now(), %(capture_time)s,"
    " %(frequency_mhz)s, %(sample_rate_hz)s, %(n_samples)s, %(receivers)s::jsonb,"
    " %(iq_sha256)s, %(batch_id)s, %(tenant)s, %(model_version)s, true, %(result)s::jsonb,"
    " %(timings)s::jsonb, %(message)s::jsonb)"
    " ON CONFLICT (job_id) DO NOTHING"
    # Not the result, timings or message: the caller has them.
    " RETURNING job_id, status, created_at, started_at, finished_at, capture_time,"
    " frequency_mhz, sample_rate_hz, n_samples, receivers, attempts, model_version, cache_hit,"
    " error, batch_id, tenant, iq_sha256, published_at),"
    " logged AS (INSERT INTO inference_logs (job_id, cache_hit) SELECT job_id, true FROM made)"
    " SELECT * FROM made"
)
GET = "SELECT * FROM jobs WHERE job_id = %(job_id)s"
# Statements that change several rows lock them in job id order, so that two of them (a worker's
# batch, a shim's published marks) never wait on each other in a cycle: a deadlock would cost the
# loser a retry after a backoff.
MARK_PUBLISHED = (
    "UPDATE jobs SET published_at = now() WHERE job_id IN (SELECT job_id FROM jobs"
    " WHERE job_id = ANY(%(ids)s) AND published_at IS NULL ORDER BY job_id FOR UPDATE)"
)
# The two statements every job runs, for one job or a batch: one parameter, a JSON array of the
# jobs' values, turned into rows by PostgreSQL (a batch costs one round trip, whatever its size).
_START_COLUMNS = (
    "job_id text, created_at timestamptz, capture_time timestamptz, frequency_mhz float8,"
    " sample_rate_hz float8, n_samples int, receivers jsonb, iq_sha256 text, batch_id text,"
    " tenant text, message jsonb"
)
START_MANY = (
    "INSERT INTO jobs AS j (job_id, status, created_at, started_at, capture_time, frequency_mhz,"
    " sample_rate_hz, n_samples, receivers, iq_sha256, attempts, batch_id, tenant, message,"
    " published_at)"
    " SELECT job_id, 'running', least(created_at, now()), now(), capture_time,"
    " frequency_mhz, sample_rate_hz, n_samples, receivers, iq_sha256, 1, batch_id, tenant,"
    f" message, now() FROM jsonb_to_recordset(%(jobs)s::jsonb) AS r({_START_COLUMNS})"
    " ORDER BY job_id"
    " ON CONFLICT (job_id) DO UPDATE SET status = 'running', started_at = now(),"
    " attempts = j.attempts + 1, published_at = coalesce(j.published_at, now())"
    # A message of another capture under the job's id (a producer reusing it) leaves the job
    # as it is, as a final job's redelivery does: the worker tells the two apart.
    f" WHERE j.status NOT IN ({FINAL_LIST}) AND j.iq_sha256 = excluded.iq_sha256"
    " RETURNING job_id, status, created_at, started_at, attempts"
)
SUCCEED_MANY = (
    "WITH given AS (SELECT * FROM jsonb_to_recordset(%(results)s::jsonb) AS r(job_id text,"
    " result jsonb, model_version text, model_version_id int, cache_hit bool, timings jsonb,"
    " inference_ms float8)),"
    # The ids as an array: PostgreSQL reads each through the primary key. (As `IN (SELECT ...)`
    # it guessed 100 given rows and one unfinished job, and scanned the whole table per batch.)
    " locked AS (SELECT job_id FROM jobs WHERE job_id = ANY(ARRAY(SELECT job_id FROM given))"
    f" AND status NOT IN ({FINAL_LIST}) ORDER BY job_id FOR UPDATE),"
    " done AS (UPDATE jobs SET status = 'succeeded', finished_at = now(), result = g.result,"
    " model_version = g.model_version, cache_hit = g.cache_hit, timings = g.timings,"
    " error = NULL FROM given g WHERE jobs.job_id = g.job_id"
    f" AND jobs.job_id IN (SELECT job_id FROM locked) AND jobs.status NOT IN ({FINAL_LIST})"
    # Not the result, timings or message: the caller has them, and parsing them back costs.
    " RETURNING jobs.job_id, jobs.status, jobs.created_at, jobs.started_at, jobs.finished_at,"
    " jobs.capture_time, jobs.frequency_mhz, jobs.sample_rate_hz, jobs.n_samples,"
    " jobs.receivers, jobs.attempts, jobs.model_version, jobs.cache_hit, jobs.error,"
    " jobs.batch_id, jobs.tenant),"
    " logged AS (INSERT INTO inference_logs (job_id, model_version_id, inference_time_ms,"
    " cache_hit) SELECT d.job_id, g.model_version_id, g.inference_ms, d.cache_hit"
    " FROM done d JOIN given g USING (job_id))"
    " SELECT * FROM done"
)

# What the statements run on the driver are prepared as on each connection (``heimdall_<name>``:
# an operator reads ``EXECUTE heimdall_start_many(...)`` in pg_stat_activity).
PREPARED_NAMES = {
    CREATE: "create",
    CREATE_ANSWERED: "create_answered",
    GET: "get",
    START_MANY: "start_many",
    SUCCEED_MANY: "succeed_many",
}
