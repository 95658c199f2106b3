"""A small HTTP client of the shim (standard library and urllib3), used by the demo, the CLI and
the tools."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import time
import urllib.parse
from typing import Any

import numpy as np
import urllib3
from urllib3 import encode_multipart_formdata

from inference_worker.storage.statuses import FINAL_STATUSES
from tasks.contract import wait_until_final

LONG_POLL_S = 25.0
"""Longest single ?wait= the client asks for (the shim allows up to HEIMDALL_MAX_WAIT_S)."""
REACH_AGAIN_S = 0.5
"""Pause before asking a shim that stopped answering a wait again."""


def _predict_path(query: dict[str, str], wait_s: float) -> str:
    """``/predict`` with its query string, ``wait`` added when the submission waits."""
    if wait_s > 0:
        query = {**query, "wait": f"{wait_s:g}"}
    return "/predict" + (f"?{urllib.parse.urlencode(query)}" if query else "")


def _timeout(wait_s: float) -> float | None:
    """A request that waits ``wait_s`` on the shim needs that much more time to answer."""
    return None if wait_s <= 0 else wait_s + 10.0


def _job_path(job_id: str, wait_s: float, include: str | None = None) -> str:
    """``/jobs/<id>`` with its query string: ``wait`` when the request waits, ``include``."""
    path = f"/jobs/{urllib.parse.quote(job_id, safe='')}"
    query = {"wait": f"{wait_s:g}"} if wait_s > 0 else {}
    if include:
        query["include"] = include
    return path + ("?" + urllib.parse.urlencode(query) if query else "")


def _seconds(header: str | None) -> float:
    """A ``Retry-After`` in seconds (0 for none, or for a date or text: asked again at once)."""
    try:
        seconds = float(header or 0)
    except ValueError:
        return 0.0
    return min(max(seconds, 0.0), 60.0) if math.isfinite(seconds) else 0.0


def _decoded(payload: bytes) -> Any:
    """A response body as JSON, or as text where it is not JSON."""
    try:
        return json.loads(payload or b"null")
    except ValueError:
        return payload.decode(errors="replace")


def _shown(body: Any) -> str:
    """A body in a message: empty, or its start (an error page can be long)."""
    if body is None:
        return "an empty body"
    text = body if isinstance(body, str) else json.dumps(body)
    return repr(text if len(text) <= 120 else text[:117] + "...")


class ShimError(RuntimeError):
    """The shim answered with an error: ``status`` and the decoded ``body``, read as the error's
    message, code and status (``no job with id 'x' (HTTP 404, job_not_found)``). An answer not
    in the shim's form (another server at that address, a proxy's error page) says where it came
    from (``request``: ``http://host:port (GET /jobs/x)``) and what it was."""

    def __init__(
        self,
        status: int,
        body: Any,
        request: str = "",
        expected: str = "",
        hint: str = "is `heimdall-inference api` serving there?",
        retry_after: float = 0.0,
    ) -> None:
        error = body.get("error") if isinstance(body, dict) else None
        if not expected and isinstance(error, dict) and "message" in error:
            text = f"{error['message']} (HTTP {status}, {error.get('code', 'error')})"
        else:
            what = expected or "an error in the shim's form"
            text = f"{request or 'the shim'} answered HTTP {status} with {_shown(body)}, not {what}"
            text += f": {hint}" if hint else ""
        super().__init__(text)
        self.status, self.body = status, body
        self.retry_after = retry_after
        """The answer's ``Retry-After`` in seconds (0: none read)."""

    @property
    def starting(self) -> bool:
        """The shim is starting: it waits for its stores before it serves (``503 starting``)."""
        return self.status == 503 and starting_answer(self.body)


def starting_answer(body: object) -> bool:
    """Whether ``body`` is a starting shim's answer to any request (``{"status": "starting",
    ...}``: it waits for its stores before it serves)."""
    return isinstance(body, dict) and body.get("status") == "starting"


class ShimUnreachable(ConnectionError):
    """The shim did not answer: refused, reset or timed out (``base_url``, ``reason``)."""

    def __init__(self, base_url: str, request: str, reason: object) -> None:
        super().__init__(
            f"cannot reach the shim at {base_url} ({request}): {reason}; "
            "is `heimdall-inference api` running there?"
        )
        self.base_url, self.reason = base_url, reason


class ShimClient:
    """A small client of the shim. ``api_key`` defaults to the ``HEIMDALL_API_KEY`` variable
    (needed when the shim has API keys configured)."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8003",
        timeout_s: float = 30.0,
        api_key: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.api_key = api_key if api_key is not None else os.environ.get("HEIMDALL_API_KEY")
        # Kept-alive connections: a connection per request would cost both sides a handshake.
        self._http = urllib3.PoolManager(maxsize=8, retries=False)

    def _send(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str | None = None,
        timeout_s: float | None = None,
    ) -> urllib3.BaseHTTPResponse:
        headers = {}
        if content_type:
            headers["Content-Type"] = content_type
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            return self._http.request(
                method,
                self.base_url + path,
                body=body,
                headers=headers,
                timeout=timeout_s or self.timeout_s,
            )
        except urllib3.exceptions.HTTPError as exc:  # refused, reset, timed out
            reason = getattr(exc, "reason", None) or exc  # urllib3 wraps the socket's error
            raise ShimUnreachable(self.base_url, f"{method} {path.split('?')[0]}", reason) from exc

    def _request(self, method: str, path: str, *more: Any) -> tuple[int, Any]:
        """Status and JSON body (the text where the body is not JSON) of one request (``more``:
        :meth:`_send`'s body, content type and timeout)."""
        response = self._send(method, path, *more)
        return response.status, _decoded(response.data)

    def _where(self, method: str, path: str) -> str:
        return f"{self.base_url} ({method} {path.split('?')[0]})"

    def _view(self, method: str, path: str, *more: Any) -> dict[str, Any]:
        """A job as the shim shows one, carrying ``job_id`` and ``status``: a submission's 202
        body (``queued``, or final for a capture answered from the result cache), or the 200
        body of ``GET /jobs/<id>`` and of a submission with ``wait`` that finished in time. The
        shim's error, or an answer not in its form, is raised as :class:`ShimError`."""
        return self._view_and_pause(method, path, *more)[0]

    def _view_and_pause(self, method: str, path: str, *more: Any) -> tuple[dict[str, Any], float]:
        """:meth:`_view`, and the seconds the shim asks to be left before the next request (its
        ``Retry-After``: a wait it held none for; 0 without one)."""
        response = self._send(method, path, *more)
        status, body = response.status, _decoded(response.data)
        if status not in (200, 202):
            pause = _seconds(response.headers.get("Retry-After"))
            raise ShimError(status, body, self._where(method, path), retry_after=pause)
        if not (
            isinstance(body, dict)
            and isinstance(body.get("job_id"), str)
            and isinstance(body.get("status"), str)
        ):
            raise ShimError(status, body, self._where(method, path), "a job as the shim shows one")
        return body, _seconds(response.headers.get("Retry-After"))

    def health(self, timeout_s: float | None = None) -> tuple[int, Any]:
        """``GET /health``: its status and body (``timeout_s``: this request's, else the
        client's)."""
        return self._request("GET", "/health", None, None, timeout_s)

    def submit_npy(
        self,
        iq: np.ndarray,
        *,
        sample_rate_hz: float,
        frequency_mhz: float,
        receivers: list[str],
        job_id: str | None = None,
        capture_time: str | None = None,
        wait_s: float = 0.0,
    ) -> dict[str, Any]:
        """POST a ``(3, n)`` complex64 array as ``application/x-npy``; returns the 202 body, or
        with ``wait_s`` the job's view once it is final (see :meth:`_view`)."""
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(iq, dtype=np.complex64), allow_pickle=False)
        query = {
            "sample_rate_hz": repr(float(sample_rate_hz)),
            "frequency_mhz": repr(float(frequency_mhz)),
            "receivers": ",".join(receivers),
        }
        if job_id:
            query["job_id"] = job_id
        if capture_time:
            query["capture_time"] = capture_time
        path = _predict_path(query, wait_s)
        return self._view("POST", path, buffer.getvalue(), "application/x-npy", _timeout(wait_s))

    def submit_json(self, document: dict[str, Any], wait_s: float = 0.0) -> dict[str, Any]:
        """POST a JSON submission as documented in the README; returns the 202 body, or with
        ``wait_s`` the job's view once it is final (see :meth:`_view`)."""
        body = json.dumps(document).encode()
        path = _predict_path({}, wait_s)
        return self._view("POST", path, body, "application/json", _timeout(wait_s))

    def submit_tdoa(
        self,
        files: list[tuple[str, bytes]],
        *,
        receivers: list[dict[str, Any]],
        frequency_mhz: float,
        job_id: str | None = None,
        capture_time: str | None = None,
        expect_emitter: str | None = None,
        propagation: str | None = None,
    ) -> dict[str, Any]:
        """POST KiwiSDR IQ WAV files ``(file name, bytes)``, one per receiver in the order of
        ``receivers`` (``{"id", "lat", "lon"}``), as ``multipart/form-data``; returns the 202
        body. The job locates by time differences of arrival; ``expect_emitter``
        (``among_receivers`` or ``anywhere``) says where the emitter is expected,
        ``propagation`` (``skywave`` or ``ground``) how it reached the receivers."""
        fields: list[tuple[str, Any]] = [
            ("receivers", json.dumps(receivers)),
            ("frequency_mhz", repr(float(frequency_mhz))),
        ]
        if job_id:
            fields.append(("job_id", job_id))
        if capture_time:
            fields.append(("capture_time", capture_time))
        if expect_emitter:
            fields.append(("expect_emitter", expect_emitter))
        if propagation:
            fields.append(("propagation", propagation))
        fields += [("capture", (name, data, "audio/wav")) for name, data in files]
        body, content_type = encode_multipart_formdata(fields)
        return self._view("POST", "/predict", body, content_type)

    def job_map(self, job_id: str) -> bytes:
        """The PNG of a TDoA job's likelihood (``GET /jobs/<id>/map.png``)."""
        path = f"/jobs/{urllib.parse.quote(job_id, safe='')}/map.png"
        response = self._send("GET", path)
        if response.status != 200:
            raise ShimError(response.status, _decoded(response.data), self._where("GET", path))
        if not response.data.startswith(b"\x89PNG\r\n\x1a\n"):
            where = self._where("GET", path)
            raise ShimError(200, _decoded(response.data), where, "a PNG picture")
        return bytes(response.data)

    @staticmethod
    def json_document(
        iq: np.ndarray,
        *,
        sample_rate_hz: float,
        frequency_mhz: float,
        receivers: list[str],
        **extra: Any,
    ) -> dict[str, Any]:
        """A JSON submission carrying the IQ as base64 complex64 bytes."""
        raw = np.ascontiguousarray(iq, dtype="<c8").tobytes()
        return {
            "iq_data": base64.b64encode(raw).decode(),
            "sample_rate_hz": sample_rate_hz,
            "frequency_mhz": frequency_mhz,
            "receivers": receivers,
            **extra,
        }

    def job(self, job_id: str, wait_s: float = 0.0, include: str | None = None) -> dict[str, Any]:
        """The job as ``GET /jobs/<id>`` shows it; with ``wait_s``, once it is final or after that
        many seconds (the shim holds the request: no polling); ``include="geojson"`` adds the
        result as GeoJSON."""
        return self._view("GET", _job_path(job_id, wait_s, include))

    def wait(self, job_id: str, timeout_s: float = 60.0) -> dict[str, Any]:
        """Wait until the job is final (long-poll); raises TimeoutError after ``timeout_s``.

        A shim that answered this wait and then stops answering (restarted: a stopping shim
        ends its waits with the job as it is, and the next one takes a moment to listen) is
        asked again every :data:`REACH_AGAIN_S` until the deadline; one that never answered
        raises :class:`ShimUnreachable` at once. A shim starting (it waits for its stores) is
        asked again after its ``Retry-After``. A shim that held no wait (as many held as it
        may) is asked again after its ``Retry-After``."""
        longest = max(1.0, min(LONG_POLL_S, self.timeout_s - 5.0))
        deadline = time.monotonic() + timeout_s
        answered = False

        def fetch() -> dict[str, Any] | None:
            nonlocal answered
            left = deadline - time.monotonic()
            path = _job_path(job_id, max(0.0, min(longest, left)))
            try:
                view, pause = self._view_and_pause("GET", path)
            except ShimUnreachable:
                if not answered or left < REACH_AGAIN_S:
                    raise
                time.sleep(REACH_AGAIN_S)
                return None
            except ShimError as exc:  # a shim starting again is asked again when it says
                pause = max(exc.retry_after, REACH_AGAIN_S)
                if not exc.starting or left < pause:
                    raise
                time.sleep(pause)
                return None
            answered = True
            if pause and view["status"] not in FINAL_STATUSES:
                time.sleep(max(0.0, min(pause, deadline - time.monotonic())))
            return view

        return wait_until_final(fetch, job_id, timeout_s, interval_s=0.0)
