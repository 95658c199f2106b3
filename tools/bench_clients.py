"""Closed-loop HTTP clients of the shim for the throughput benchmark: each submits a capture,
waits for its result if asked, and submits again, on a kept-alive connection of its own."""

from __future__ import annotations

import http.client
import io
import json
import threading
import time
from dataclasses import dataclass, field

import numpy as np


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@dataclass
class Load:
    """Closed-loop clients against the shim: each submits, (optionally) waits, submits again."""

    port: int
    bodies: list[bytes]
    query: str
    wait_results: bool
    jobs: int
    id_prefix: str = "b"
    submit_waits: bool = False
    """Wait in the submission itself (``POST /predict?wait=``): one request a job."""
    submit_ms: list[float] = field(default_factory=list)
    end_to_end_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    done: int = 0
    answered: int = 0
    """Submissions whose 202 already carried the final result (a cached capture)."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    """Set when the run is interrupted: clients take no more jobs, and a request that fails
    then (the shim being stopped under it) ends its client quietly."""
    _local: threading.local = field(default_factory=threading.local)

    def _take(self) -> int | None:
        with self.lock:
            if self.done >= self.jobs or self.stop.is_set():
                return None
            self.done += 1
            return self.done

    def _request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """One request on this client thread's kept-alive connection (opened again if the
        shim closed it), as an HTTP client library with a connection pool sends it."""
        headers = {"Content-Type": "application/x-npy"} if body is not None else {}
        for attempt in (1, 2):
            connection = getattr(self._local, "connection", None)
            if connection is None:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                self._local.connection = connection
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                self._local.retry_after = float(response.getheader("Retry-After") or 0)
                return response.status, response.read()
            except (http.client.HTTPException, ConnectionError):
                connection.close()
                self._local.connection = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def client(self) -> None:
        try:
            self._client()
        except Exception:
            if not self.stop.is_set():
                raise

    def _client(self) -> None:
        while (number := self._take()) is not None:
            body = self.bodies[number % len(self.bodies)]
            started = time.perf_counter()
            wait = "&wait=10" if self.submit_waits else ""
            status, raw = self._request(
                "POST", f"/predict?{self.query}&job_id={self.id_prefix}-{number}{wait}", body
            )
            submitted = time.perf_counter()
            if status == 200 and self.submit_waits:  # answered final
                self.end_to_end_ms.append((submitted - started) * 1e3)
                continue
            if status != 202:
                self.errors.append(f"{status} {raw[:120]!r}")
                continue
            self.submit_ms.append((submitted - started) * 1e3)
            if not self.wait_results:
                if json.loads(raw).get("status") == "succeeded":
                    with self.lock:
                        self.answered += 1
                continue
            while not self.stop.is_set():
                status, raw = self._request("GET", f"/jobs/{self.id_prefix}-{number}?wait=10")
                view = json.loads(raw) if status == 200 else {}
                if view.get("status") in ("succeeded", "failed"):
                    break
                # a shim holding as many waits as it may asks for a pause; one without long-poll
                # answers at once
                time.sleep(self._local.retry_after or 0.002)
            else:
                return
            self.end_to_end_ms.append((time.perf_counter() - started) * 1e3)

    def run(self, clients: int) -> float:
        """Seconds ``clients`` clients took to do the jobs. Ctrl-C stops them taking more and
        is raised at once; the clients are daemon threads, so one still waiting on an answer
        does not keep the benchmark from ending."""
        threads = [threading.Thread(target=self.client, daemon=True) for _ in range(clients)]
        started = time.perf_counter()
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        except KeyboardInterrupt:
            self.stop.set()
            raise
        return time.perf_counter() - started


def pct(values: list[float]) -> str:
    if not values:
        return "-"
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return f"p50 {p50:.1f} / p95 {p95:.1f} / p99 {p99:.1f} ms"


def answers_health(probe: Load, model_ready: bool = False) -> bool:
    """Whether the server behind ``probe`` answers ``GET /health`` with 200 (and, if asked,
    reports a worker with its model loaded)."""
    try:
        status, raw = probe._request("GET", "/health")
    except OSError:
        return False
    return status == 200 and (not model_ready or json.loads(raw)["checks"]["model"]["ok"])
