"""Redis: capture blobs (the claim check), job results with a TTL, the result cache and the
heartbeats of worker and api processes. Every key starts with the configured prefix."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import redis
from redis.connection import DefaultParser, Encoder, PythonRespSerializer

from inference_worker.storage.dead_peers import SOCKET_OPTIONS
from inference_worker.storage.errors import PersistenceError
from inference_worker.storage.redis_silence import breaker_for
from inference_worker.storage.statuses import FINAL_STATUSES

# Commands are packed by redis-py's own serializer, which sends a large value (a capture) as it
# is; hiredis's packer copies it into one new buffer first: ~75 us for a 288 kB capture in a
# threaded shim against ~7 us. Replies are still parsed by hiredis.
_PACKER = PythonRespSerializer(6000, Encoder("utf-8", "strict", False).encode)


class ReplyParser(DefaultParser):  # type: ignore[misc,valid-type]  # hiredis or RESP2
    """redis-py's reply parser (hiredis where installed), telling a Redis that cannot persist
    (``MISCONF``) apart from other refusals: it is a store unavailable for a while, not a
    fault in the request."""

    EXCEPTION_CLASSES = {**DefaultParser.EXCEPTION_CLASSES, "MISCONF": PersistenceError}


HEARTBEAT_INTERVAL_S = 2.0
HEARTBEAT_TTL_S = 10
"""A process beats every ``HEARTBEAT_INTERVAL_S``; one silent for ``HEARTBEAT_TTL_S`` is gone."""
BEATERS_TTL_S = 86_400
"""How long the set naming the processes that beat outlives the last beat."""


def connect(redis_url: str) -> redis.Redis:
    over_tcp = not redis_url.startswith("unix:")
    return redis.Redis.from_url(
        redis_url,
        socket_connect_timeout=3,
        socket_timeout=5,
        health_check_interval=30,
        command_packer=_PACKER,
        parser_class=ReplyParser,
        retry=breaker_for(redis_url),  # a Redis that stopped answering is waited on once a while
        **(
            {"socket_keepalive": True, "socket_keepalive_options": SOCKET_OPTIONS}
            if over_tcp
            else {}
        ),
    )


JsonValue = dict[str, Any] | str
"""A document, or its JSON already encoded."""


def _encoded(value: JsonValue) -> str:
    return value if isinstance(value, str) else json.dumps(value)


class RedisStore:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def ping(self) -> None:
        self.client.ping()

    # --- claim check ----------------------------------------------------------------------
    def blob_key(self, job_id: str, digest: str) -> str:
        """Where a job's capture waits for its worker: by job id and the capture's sha256, so
        that a producer sending another capture under a job id cannot replace the job's own."""
        return f"{self.prefix}blob:{job_id}:{digest[:16]}"

    def earlier_blob_key(self, job_id: str) -> str:
        """Where releases that kept no task message in a job's row stored its capture."""
        return f"{self.prefix}blob:{job_id}"

    def put_blob(self, key: str, data: bytes, ttl_s: int) -> None:
        self.client.set(key, data, ex=ttl_s)

    def put_blob_and_note(
        self, key: str, data: bytes, ttl_s: int, note: tuple[str, JsonValue, int]
    ) -> None:
        """Store a new job's capture and, where its final view will go, a note of the job while
        it waits (``(job_id, {"job_id", "status", "tenant"}, ttl)``), in one round trip. The
        note tells a request about to wait for the job (``?wait=``) that it exists and whose it
        is without reading its row; it is never answered with, never replaces what is there
        already, and is skipped when Redis is full (the row says the same).

        Raises:
            Any error storing the capture.
        """
        job_id, what, note_ttl_s = note
        pipeline = self.client.pipeline(transaction=False)
        pipeline.set(key, data, ex=ttl_s)
        pipeline.set(self.result_key(job_id), _encoded(what), ex=note_ttl_s, nx=True)
        stored = pipeline.execute(raise_on_error=False)[0]
        if isinstance(stored, Exception):
            raise stored

    def get_blob(self, key: str) -> bytes | None:
        value = self.client.get(key)
        return None if value is None else bytes(value)  # type: ignore[arg-type]

    def has_blob(self, key: str) -> bool:
        return bool(self.client.exists(key))

    def delete_blob(self, key: str) -> None:
        self.client.delete(key)

    def fetch_capture(
        self, blob_key: str, cache_key: str | None
    ) -> tuple[bytes | None, dict[str, Any] | None]:
        """A job's stored IQ and, if ``cache_key``, the cached result of the same capture, in one
        round trip."""
        if cache_key is None:
            return self.get_blob(blob_key), None
        blob, cached = self.client.mget([blob_key, cache_key])
        return (
            None if blob is None else bytes(blob),  # type: ignore[arg-type]
            None if cached is None else json.loads(cached),
        )

    def fetch_captures(
        self, blob_keys: list[str], cache_keys: list[str] | None
    ) -> list[tuple[bytes | None, dict[str, Any] | None]]:
        """:meth:`fetch_capture` for several jobs, in one round trip."""
        values: list[Any] = self.client.mget(blob_keys + (cache_keys or []))
        blobs, cached = values[: len(blob_keys)], values[len(blob_keys) :]
        return [
            (
                None if blob is None else bytes(blob),
                None if not cached or cached[i] is None else json.loads(cached[i]),
            )
            for i, blob in enumerate(blobs)
        ]

    def finish(
        self,
        blob_key: str,
        result: tuple[str, dict[str, Any], int],
        cache: tuple[str, dict[str, Any], int] | None,
    ) -> None:
        """After a job's result is recorded, in one round trip: drop its IQ (first, it frees the
        most), cache the result (``(job_id, view, ttl)``) and, if given, the result cache entry
        (``(key, result, ttl)``). The copies are skipped when Redis is full: PostgreSQL holds
        the record.

        Raises:
            Any error but Redis being full.
        """
        self.finish_many([(blob_key, result, cache)])

    def finish_many(
        self,
        finished: Sequence[
            tuple[str, tuple[str, JsonValue, int], tuple[str, JsonValue, int] | None]
        ],
    ) -> None:
        """:meth:`finish` for several jobs (``(blob_key, result, cache)`` each; a view or cached
        result may come encoded as JSON already), in one round trip."""
        pipeline = self.client.pipeline(transaction=False)
        for blob_key, _, _ in finished:
            pipeline.delete(blob_key)
        for _, (job_id, view, result_ttl_s), cache in finished:
            pipeline.set(self.result_key(job_id), _encoded(view), ex=result_ttl_s)
            if cache is not None and cache[2] > 0:
                pipeline.set(cache[0], _encoded(cache[1]), ex=cache[2])
            pipeline.publish(self.done_channel(), job_id)
        for outcome in pipeline.execute(raise_on_error=False):
            if isinstance(outcome, Exception) and not isinstance(
                outcome, redis.exceptions.OutOfMemoryError
            ):
                raise outcome

    # --- results --------------------------------------------------------------------------
    def result_key(self, job_id: str) -> str:
        return f"{self.prefix}result:{job_id}"

    def withdraw(self, blob_key: str, job_id: str) -> None:
        """Drop what a withdrawn submission stored: its capture, and the note it was given (see
        :meth:`put_blob_and_note`) unless its final view replaced it. One round trip, and one
        more where the note is there to drop."""
        key = self.result_key(job_id)
        pipeline = self.client.pipeline(transaction=False)
        pipeline.delete(blob_key)
        pipeline.get(key)
        value = pipeline.execute()[1]
        if value is not None and json.loads(value).get("status") not in FINAL_STATUSES:
            self.client.delete(key)

    def done_channel(self) -> str:
        """The channel on which every finished job's id is published (long-polls wait on it)."""
        return f"{self.prefix}done"

    def put_result(self, job_id: str, view: JsonValue, ttl_s: int) -> None:
        """Cache a final job's view (or its JSON) and announce that it is final, in one round
        trip."""
        pipeline = self.client.pipeline(transaction=False)
        pipeline.set(self.result_key(job_id), _encoded(view), ex=ttl_s)
        pipeline.publish(self.done_channel(), job_id)
        pipeline.execute()

    def get_result(self, job_id: str) -> dict[str, Any] | None:
        """A final job's cached view (None while it is not final, or not cached)."""
        value = self.get_result_json(job_id)
        view = None if value is None else json.loads(value)
        return view if view is not None and view.get("status") in FINAL_STATUSES else None

    def get_result_json(self, job_id: str) -> bytes | None:
        """What Redis holds under a job's result key, as stored (JSON): a final job's view, to
        answer with as it is, or the note a job accepted by the shim has while it waits (see
        :meth:`put_blob_and_note`)."""
        value = self.client.get(self.result_key(job_id))
        return None if value is None else bytes(value)  # type: ignore[arg-type]

    # --- result cache for resubmitted identical captures ------------------------------------
    def map_key(self, job_id: str) -> str:
        return f"{self.prefix}map:{job_id}"

    def put_map(self, job_id: str, png: bytes, ttl_s: int) -> None:
        """A picture of a job's likelihood (TDoA jobs), kept as long as its result."""
        self.client.set(self.map_key(job_id), png, ex=ttl_s)

    def get_map(self, job_id: str) -> bytes | None:
        value = self.client.get(self.map_key(job_id))
        return value if isinstance(value, bytes) else None

    def cache_key(self, model_version: str, model_sha256: str, fingerprint: str) -> str:
        """Where the result of a capture (``fingerprint``) by a model is cached: by the model's
        version *and* its file's digest, so a model whose weights or calibration changed under
        the same version label never answers with the old one's results."""
        return f"{self.prefix}cache:{model_version}:{model_sha256[:16]}:{fingerprint}"

    def cache_get(self, key: str) -> dict[str, Any] | None:
        value = self.client.get(key)
        return None if value is None else json.loads(value)

    def cached_answer(self, key: str) -> tuple[float, str | None]:
        """The challenger's share of traffic and the cached result under ``key`` (its JSON, as
        stored), in one round trip (a shim answers a duplicate capture at submission with
        them)."""
        pipeline = self.client.pipeline(transaction=False)
        pipeline.hget(self.serving_key(), "challenger_fraction")
        pipeline.get(key)
        fraction, cached = pipeline.execute()
        return float(fraction or 0.0), None if cached is None else bytes(cached).decode()

    def cache_put(self, key: str, result: dict[str, Any], ttl_s: int) -> None:
        if ttl_s > 0:
            self.client.set(key, json.dumps(result), ex=ttl_s)

    # --- what the workers serve (see inference_worker.serving.models) -----------------------
    def serving_key(self) -> str:
        return f"{self.prefix}serving"

    def serving_state(self) -> tuple[int, float]:
        """(generation, challenger fraction) the operators last asked for."""
        generation, fraction = self.client.hmget(
            self.serving_key(), "generation", "challenger_fraction"
        )
        return int(generation or 0), float(fraction or 0.0)

    def served_model(self) -> dict[str, Any] | None:
        """The champion's summary (receivers, feature minimums) last announced, if any."""
        value = self.client.hget(self.serving_key(), "champion")
        return None if value is None else json.loads(value)

    def announce_model(self, summary: dict[str, Any]) -> None:
        """Say which champion submissions are checked against (without asking for a reload)."""
        self.client.hset(self.serving_key(), "champion", json.dumps(summary))

    def request_reload(
        self, challenger_fraction: float | None = None, champion: dict[str, Any] | None = None
    ) -> int:
        """Ask every worker process to reload between jobs; returns the new generation.

        ``champion``, the summary of the model the reload serves, replaces the announced one in
        the same transaction, so shims and producers check submissions against it.
        """
        pipeline = self.client.pipeline(transaction=True)
        if challenger_fraction is not None:
            pipeline.hset(self.serving_key(), "challenger_fraction", challenger_fraction)
        if champion is not None:
            pipeline.hset(self.serving_key(), "champion", json.dumps(champion))
        pipeline.hincrby(self.serving_key(), "generation", 1)
        return int(pipeline.execute()[-1])

    # --- heartbeats of worker and api processes --------------------------------------------
    # Each process's beat is a key with a TTL; a set of its kind names the processes that have
    # beaten, so a reader asks for those keys alone. Found by SCAN, a reader walked the whole
    # keyspace (results, the cache, captures): /health took 177 ms with 100 000 keys in Redis
    # and a second with 500 000.
    def heartbeat(self, worker_id: str, info: dict[str, Any], ttl_s: int) -> None:
        self._beat("worker", worker_id, info, ttl_s)

    def forget_worker(self, worker_id: str) -> None:
        self._forget("worker", worker_id)

    def workers(self) -> list[dict[str, Any]]:
        return self._beating("worker")

    def api_heartbeat(self, api_id: str, info: dict[str, Any], ttl_s: int) -> None:
        self._beat("api", api_id, info, ttl_s)

    def forget_api(self, api_id: str) -> None:
        self._forget("api", api_id)

    def apis(self) -> list[dict[str, Any]]:
        return self._beating("api")

    def _beat_key(self, kind: str, member: str) -> str:
        return f"{self.prefix}{kind}:{member}"

    def _beaters_key(self, kind: str) -> str:
        return f"{self.prefix}beating:{kind}"

    def _beat(self, kind: str, member: str, info: dict[str, Any], ttl_s: int) -> None:
        pipeline = self.client.pipeline(transaction=False)
        pipeline.set(self._beat_key(kind, member), json.dumps(info), ex=ttl_s)
        pipeline.sadd(self._beaters_key(kind), member)
        # a day past the last beat, the set of a deployment no longer running goes too; never
        # shorter than a beat of another process (their lifetimes may differ)
        pipeline.expire(self._beaters_key(kind), max(ttl_s, BEATERS_TTL_S))
        pipeline.execute()

    def _forget(self, kind: str, member: str) -> None:
        pipeline = self.client.pipeline(transaction=False)
        pipeline.delete(self._beat_key(kind, member))
        pipeline.srem(self._beaters_key(kind), member)
        pipeline.execute()

    def _beating(self, kind: str) -> list[dict[str, Any]]:
        """The beats not expired. A process whose beat has expired (one that died) leaves the
        set here."""
        found = self.client.smembers(self._beaters_key(kind))
        members = sorted(m.decode() if isinstance(m, bytes) else m for m in found)
        if not members:
            return []
        values = self.client.mget([self._beat_key(kind, m) for m in members])
        gone = [m for m, v in zip(members, values, strict=True) if v is None]
        if gone:
            self.client.srem(self._beaters_key(kind), *gone)
        return [json.loads(v) for v in values if v is not None]
