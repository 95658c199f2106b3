"""The capture contract: complex IQ from 3 receivers plus its metadata, validated and decoded.

Pure numpy: used by the HTTP shim to check what clients send and by the worker to read the
stored IQ bytes back. Every problem raises :class:`CaptureError` with a message meant for the
client who made the mistake.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import io
import json
import math
import re
import reprlib
import tokenize
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

RECEIVER_COUNT = 3
IQ_DTYPE = np.dtype("<c8")
"""IQ travels and is stored as little-endian complex64, C order, shape (3, n_samples)."""


def capture_nbytes(n_samples: int) -> int:
    """Bytes of a stored capture of ``n_samples`` per receiver."""
    return RECEIVER_COUNT * n_samples * IQ_DTYPE.itemsize


JOB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
RECEIVER_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class CaptureError(ValueError):
    """The capture or its metadata is invalid; the message says what is wrong."""


class CaptureTooLarge(CaptureError):
    """The capture is longer than the service accepts (HTTP 413)."""


@dataclass(frozen=True)
class CaptureLimits:
    """Bounds a capture must respect (from the settings and the model's feature parameters)."""

    min_samples: int = 512
    max_samples: int = 480_000
    min_sample_rate_hz: float = 1_000.0
    max_sample_rate_hz: float = 10_000_000.0


@dataclass(frozen=True)
class CaptureMeta:
    """Everything about a capture but its samples."""

    sample_rate_hz: float
    frequency_mhz: float
    receivers: tuple[str, ...]
    capture_time: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "sample_rate_hz": self.sample_rate_hz,
            "frequency_mhz": self.frequency_mhz,
            "receivers": list(self.receivers),
            "capture_time": self.capture_time.isoformat(),
        }


def iq_digest(iq: np.ndarray) -> str:
    """sha256 of the IQ bytes as stored; the result cache and idempotency checks key on it."""
    return hashlib.sha256(np.ascontiguousarray(iq, dtype=IQ_DTYPE).data).hexdigest()


def validate_iq(iq: np.ndarray, limits: CaptureLimits) -> np.ndarray:
    """Check shape, dtype, length and values of a decoded IQ array; return it C-contiguous."""
    if iq.dtype != IQ_DTYPE:
        hint = " (convert it: array.astype(numpy.complex64))" if iq.dtype.kind == "c" else ""
        raise CaptureError(f"IQ must be complex64 (little-endian); got dtype {iq.dtype.name}{hint}")
    if iq.ndim != 2 or iq.shape[0] != RECEIVER_COUNT:
        turned = iq.ndim == 2 and iq.shape[1] == RECEIVER_COUNT
        raise CaptureError(
            f"IQ must have shape ({RECEIVER_COUNT}, n_samples), one row per receiver; "
            f"got shape {tuple(iq.shape)}" + (" (transpose it: array.T)" if turned else "")
        )
    n = iq.shape[1]
    if n == 0:
        raise CaptureError("IQ is empty")
    if n < limits.min_samples:
        raise CaptureError(
            f"capture too short: {n} samples per receiver, at least {limits.min_samples} needed"
        )
    if n > limits.max_samples:
        raise CaptureTooLarge(
            f"capture too long: {n} samples per receiver, at most {limits.max_samples} accepted"
        )
    iq = np.ascontiguousarray(iq)  # a Fortran-order .npy is accepted too
    if not np.isfinite(iq.view(np.float32)).all():
        raise CaptureError("IQ contains NaN or infinite values")
    silent = [i for i in range(RECEIVER_COUNT) if not np.any(iq[i])]
    if silent:
        raise CaptureError(f"receiver channel(s) {silent} contain only zeros")
    return iq


NPY_MAGIC = b"\x93NUMPY"


@functools.lru_cache(maxsize=64)
def _npy_layout(preamble: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype of a ``.npy`` preamble (magic, version, header).

    Submissions of one kind repeat the same header byte for byte, so each is parsed once.
    """
    stream = io.BytesIO(preamble)
    major, _ = np.lib.format.read_magic(stream)
    if major not in (1, 2):
        raise ValueError(f"unsupported .npy format version {major}")
    read_header = (
        np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    )
    try:
        return read_header(stream)
    except tokenize.TokenError as exc:  # numpy's fallback parser of old headers, on a cut header
        raise ValueError(f"the header is not a Python literal ({exc.args[0]})") from None
    except RecursionError:  # e.g. thousands of nested signs: Python's parser gives up
        raise ValueError("the header is nested too deeply to parse") from None


def decode_npy(body: bytes) -> np.ndarray:
    """Read a ``.npy`` body (no pickles) without copying its data; shape and dtype are checked
    by :func:`validate_iq`."""
    if not body:
        raise CaptureError("request body is empty; expected a .npy array")
    try:
        if body[:6] != NPY_MAGIC or len(body) < 12:
            raise ValueError("it does not start with the .npy magic string")
        size_bytes = 2 if body[6] == 1 else 4
        start = 8 + size_bytes
        end = start + int.from_bytes(body[8:start], "little")
        shape, fortran, dtype = _npy_layout(bytes(body[:end]))
        if dtype.hasobject:
            raise ValueError("object arrays (pickles) are not accepted")
        count = math.prod(shape)
        if len(body) - end != count * dtype.itemsize:
            raise ValueError(
                f"{len(body) - end} data bytes for shape {shape} of {dtype}, expected "
                f"{count * dtype.itemsize}"
            )
        array = np.frombuffer(body, dtype=dtype, count=count, offset=end)
    except (ValueError, OSError, EOFError, TypeError, SyntaxError) as exc:
        raise CaptureError(f"body is not a valid .npy array: {exc}") from None
    return array.reshape(shape, order="F" if fortran else "C")


def _base64_bytes(text: str) -> bytes:
    """Standard base64, also as encoders wrap it in lines (``base64`` without ``-w 0``, MIME)."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        pass
    unwrapped = "".join(text.split())  # whitespace is never part of base64
    try:
        if unwrapped != text:
            return base64.b64decode(unwrapped, validate=True)
    except (binascii.Error, ValueError):
        pass
    raise CaptureError(
        "iq_data is a string but not valid base64 (the standard alphabet A-Z a-z 0-9 + /, "
        "padded with =)"
    )


def decode_json_iq(value: object) -> np.ndarray:
    """Decode the ``iq_data`` field of a JSON submission.

    Two forms are accepted:
      * a list of 3 lists of interleaved floats ``[re0, im0, re1, im1, ...]``, one per receiver;
      * a base64 string of the raw little-endian complex64 bytes of a C-order ``(3, n)`` array.
    """
    if isinstance(value, str):
        raw = _base64_bytes(value)
        if len(raw) == 0 or len(raw) % (RECEIVER_COUNT * IQ_DTYPE.itemsize):
            raise CaptureError(
                f"base64 iq_data must hold {RECEIVER_COUNT} x n complex64 values "
                f"({RECEIVER_COUNT * IQ_DTYPE.itemsize} bytes per sample instant); "
                f"got {len(raw)} bytes"
            )
        return np.frombuffer(raw, dtype=IQ_DTYPE).reshape(RECEIVER_COUNT, -1)
    if not isinstance(value, list):
        raise CaptureError(
            "iq_data must be a list of 3 interleaved [re, im, ...] float lists or a base64 string"
        )
    if len(value) != RECEIVER_COUNT:
        raise CaptureError(
            f"iq_data must have one list per receiver ({RECEIVER_COUNT}); got {len(value)}"
        )
    lengths = {len(row) if isinstance(row, list) else -1 for row in value}
    if -1 in lengths:
        raise CaptureError("each iq_data entry must be a list of floats")
    if len(lengths) != 1:
        raise CaptureError(f"iq_data rows have different lengths: {sorted(lengths)}")
    (length,) = lengths
    if length % 2:
        raise CaptureError("iq_data rows must interleave re and im, so their length must be even")
    try:
        with np.errstate(over="ignore"):  # out-of-range values become inf, refused by validate_iq
            floats = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError, OverflowError):
        floats = None
    if floats is None or floats.ndim != 2:  # rows of lists nest one level too deep
        raise CaptureError("iq_data rows must contain only numbers")
    return np.ascontiguousarray(floats).view(IQ_DTYPE)


def parse_json(text: str | bytes) -> Any:
    """JSON text as Python values.

    Raises:
        ValueError: not JSON, not UTF-8, or nested past the parser's depth (whose
            ``RecursionError`` is no ``ValueError``: it reached callers as an internal error).
    """
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def parse_receivers(value: object, known: Sequence[str] | None = None) -> tuple[str, ...]:
    """Receiver ids in capture row order: a list of 3 strings or a comma-separated string."""
    if isinstance(value, str):
        items: list[Any] = [part.strip() for part in value.split(",")]
    elif isinstance(value, list):
        items = value
    else:
        raise CaptureError("receivers must be a list of receiver ids (or 'a,b,c' in a query)")
    if len(items) != RECEIVER_COUNT:
        raise CaptureError(f"receivers must name {RECEIVER_COUNT} receivers; got {len(items)}")
    for item in items:
        if not isinstance(item, str) or not RECEIVER_ID_PATTERN.match(item):
            raise CaptureError(f"invalid receiver id {item!r}")
    if len(set(items)) != RECEIVER_COUNT:
        raise CaptureError("receivers must be 3 different receivers")
    if known is not None:
        unknown = [r for r in items if r not in known]
        if unknown:
            raise CaptureError(f"unknown receiver(s) {unknown}; the model knows {sorted(known)}")
    return tuple(items)


def parse_number(name: str, value: object, *, low: float, high: float) -> float:
    """A finite number within [low, high], from JSON or a query string."""
    if isinstance(value, bool) or value is None:
        raise CaptureError(f"{name} is required and must be a number")
    try:
        number = float(value)  # type: ignore[arg-type]
    except OverflowError:  # a JSON integer past float's range (hundreds of digits)
        number = math.inf
    except (TypeError, ValueError):
        raise CaptureError(f"{name} must be a number; got {reprlib.repr(value)}") from None
    if not math.isfinite(number) or not low <= number <= high:
        got = reprlib.repr(value)
        raise CaptureError(f"{name} must be between {low:g} and {high:g}; got {got}")
    return number


MAX_FREQUENCY_MHZ = 300_000.0
"""The highest tuned frequency a capture may name (300 GHz: the top of the radio spectrum)."""

EARLIEST_TIME = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_TIME = datetime(9999, 12, 31, tzinfo=UTC)
"""The times a job accepts: PostgreSQL stores any year, but a time whose UTC date falls in year
0 or 10000 (``0001-01-01T00:00+05:00``) could not be read back into Python."""


def time_in_range(name: str, moment: datetime) -> datetime:
    """``moment`` (a naive one taken as UTC) if it lies within [EARLIEST_TIME, LATEST_TIME].

    Raises:
        ValueError: outside; the text names ``name`` and the range.
    """
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    if not EARLIEST_TIME <= aware <= LATEST_TIME:
        raise ValueError(
            f"{name} must lie between {EARLIEST_TIME:%Y-%m-%d} and {LATEST_TIME:%Y-%m-%d} UTC; "
            f"got {moment.isoformat()}"
        )
    return aware


def parse_capture_time(value: object) -> datetime:
    """ISO 8601 capture time (naive times are taken as UTC); missing means now."""
    if value is None or value == "":
        return datetime.now(UTC)
    if not isinstance(value, str):
        raise CaptureError("capture_time must be an ISO 8601 string")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise CaptureError(f"capture_time is not ISO 8601: {value!r}") from None
    try:
        return time_in_range("capture_time", moment)
    except ValueError as exc:
        raise CaptureError(str(exc)) from None


def parse_job_id(value: object) -> str | None:
    """Optional client job id: resubmitting the same id never creates a second job."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not JOB_ID_PATTERN.match(value):
        raise CaptureError(
            "job_id must be 1-128 characters of letters, digits, '.', '_', ':' or '-', "
            "starting with a letter or digit"
        )
    return value


def parse_meta(
    fields: dict[str, Any], limits: CaptureLimits, known_receivers: Sequence[str] | None
) -> CaptureMeta:
    """Capture metadata from a JSON object or query parameters."""
    return CaptureMeta(
        sample_rate_hz=parse_number(
            "sample_rate_hz",
            fields.get("sample_rate_hz"),
            low=limits.min_sample_rate_hz,
            high=limits.max_sample_rate_hz,
        ),
        frequency_mhz=parse_number(
            "frequency_mhz", fields.get("frequency_mhz"), low=0.001, high=MAX_FREQUENCY_MHZ
        ),
        receivers=parse_receivers(fields.get("receivers"), known_receivers),
        capture_time=parse_capture_time(fields.get("capture_time")),
    )
