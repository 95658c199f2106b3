"""Decoding and validating what clients send."""

from __future__ import annotations

import base64
import io
from argparse import Namespace
from datetime import timedelta

import numpy as np
import pytest

from inference_worker.core.capture import (
    CaptureError,
    CaptureLimits,
    CaptureTooLarge,
    decode_json_iq,
    decode_npy,
    iq_digest,
    parse_capture_time,
    parse_job_id,
    parse_number,
    parse_receivers,
    validate_iq,
)
from inference_worker.core.contract import channel_order
from tests.helpers import npy_with_header

LIMITS = CaptureLimits(min_samples=512, max_samples=10_000)
KNOWN = ("torino", "montanaro", "giaveno")


def iq(n: int = 1_000) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.normal(size=(3, n)) + 1j * rng.normal(size=(3, n))).astype(np.complex64)


def test_base64_and_interleaved_json_forms_decode_to_the_same_array():
    array = iq()
    from_b64 = decode_json_iq(base64.b64encode(array.tobytes()).decode())
    from_lists = decode_json_iq([row.view(np.float32).tolist() for row in array])
    np.testing.assert_array_equal(from_b64, array)
    np.testing.assert_array_equal(from_lists, array)


def test_base64_wrapped_in_lines_decodes_and_another_alphabet_is_refused():
    """``base64`` in a shell (and MIME encoders) wrap at 76 characters: that was refused as
    "not valid base64"."""
    array = iq()
    wrapped = base64.encodebytes(array.tobytes()).decode()  # lines of 76 characters
    assert "\n" in wrapped
    np.testing.assert_array_equal(decode_json_iq(wrapped), array)
    np.testing.assert_array_equal(decode_json_iq(wrapped.replace("\n", "\r\n")), array)
    with pytest.raises(CaptureError, match="not valid base64"):
        decode_json_iq(base64.urlsafe_b64encode(b"\xfb\xff" * 12).decode())
    with pytest.raises(CaptureError, match="not valid base64"):
        decode_json_iq("not base64 at all!")


def test_npy_round_trip_and_pickles_are_refused():
    buffer = io.BytesIO()
    np.save(buffer, iq())
    np.testing.assert_array_equal(decode_npy(buffer.getvalue()), iq())
    pickled = io.BytesIO()
    np.save(pickled, np.array([object()], dtype=object), allow_pickle=True)
    with pytest.raises(CaptureError, match="pickle"):
        decode_npy(pickled.getvalue())
    with pytest.raises(CaptureError, match="empty"):
        decode_npy(b"")


@pytest.mark.parametrize("version", [(1, 0), (2, 0)])
def test_npy_of_either_format_version_and_order_reads_back_the_same(version):
    array = np.asfortranarray(iq())
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, version=version)
    decoded = decode_npy(buffer.getvalue())
    np.testing.assert_array_equal(decoded, array)
    np.testing.assert_array_equal(validate_iq(decoded, LIMITS), iq())


@pytest.mark.parametrize(
    ("mangle", "fragment"),
    [
        (lambda body: body[:-8], "data bytes"),
        (lambda body: body + b"\0" * 8, "data bytes"),
        (lambda body: b"PK\x03\x04" + body[4:], "magic"),
        (lambda body: body[:20], "not a valid .npy"),
    ],
    ids=["truncated", "trailing-bytes", "not-npy", "header-cut"],
)
def test_a_damaged_npy_body_is_refused_with_the_reason(mangle, fragment):
    buffer = io.BytesIO()
    np.save(buffer, iq())
    with pytest.raises(CaptureError, match=fragment):
        decode_npy(mangle(buffer.getvalue()))


@pytest.mark.parametrize(
    "header",
    [
        b"{'descr': '<c8', 'fortran_order': False, 'shape': (3, 2), ",
        b"{'descr': '<c8', 'fortran_order': False, 'shape': (3, 2), 'x': \"\"\"}",
        b"{'descr': '<c8', 'fortran_order': False, 'shape': (" + b"-" * 4000 + b"3, 2), }",
    ],
    ids=["unclosed-brace", "unclosed-string", "nested-too-deep"],
)
def test_a_header_python_cannot_parse_is_refused_as_a_bad_npy(header):
    """numpy's header parser lets tokenize's and the compiler's own errors through; a client's
    broken header is still the client's mistake (a 400), not the service's."""
    with pytest.raises(CaptureError, match="not a valid .npy"):
        decode_npy(npy_with_header(header))


def test_valid_capture_passes_validation():
    assert validate_iq(iq(), LIMITS).shape == (3, 1_000)


@pytest.mark.parametrize(
    ("array", "hint"),
    [
        (iq().astype(np.complex128), r"astype\(numpy.complex64\)"),  # numpy's default complex
        (iq().T.copy(), r"transpose it: array.T"),  # samples in rows
    ],
    ids=["complex128", "n-by-3"],
)
def test_the_two_commonest_array_mistakes_are_told_how_to_mend(array, hint):
    with pytest.raises(CaptureError, match=hint):
        validate_iq(array, LIMITS)
    with pytest.raises(CaptureError) as plain:
        validate_iq(iq().real.astype(np.float32), LIMITS)
    assert "astype" not in str(plain.value)


def test_too_long_capture_is_its_own_error():
    with pytest.raises(CaptureTooLarge):
        validate_iq(iq(10_001), LIMITS)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("a,b", "3 receivers"),
        ([1, 2, 3], "invalid receiver"),
        ("torino,torino,giaveno", "different"),
        ("torino,montanaro,paris", "unknown"),
        (None, "list"),
    ],
)
def test_bad_receivers_are_named(value, fragment):
    with pytest.raises(CaptureError, match=fragment):
        parse_receivers(value, KNOWN)


def test_receivers_parse_from_query_or_json():
    assert parse_receivers("giaveno, torino,montanaro", KNOWN) == ("giaveno", "torino", "montanaro")
    assert parse_receivers(["torino", "montanaro", "giaveno"], KNOWN) == KNOWN


def test_channel_order_puts_rows_in_the_model_order():
    order = channel_order(("giaveno", "torino", "montanaro"), KNOWN)
    assert [("giaveno", "torino", "montanaro")[i] for i in order] == list(KNOWN)


@pytest.mark.parametrize(
    "text", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00", "1969-12-31T23:59:59Z"]
)
def test_a_capture_time_outside_what_the_stores_give_back_is_refused(text):
    """Year 1 at +05:00 is year 0 in UTC: PostgreSQL kept it, and every read of the row failed."""
    with pytest.raises(CaptureError, match="capture_time must lie between 1970-01-01"):
        parse_capture_time(text)
    assert parse_capture_time("9999-12-30T18:59:59-05:00").year == 9999


def test_capture_time_defaults_to_now_and_naive_means_utc():
    assert parse_capture_time(None).tzinfo is not None
    assert parse_capture_time("2026-11-27T10:00:00").utcoffset() == timedelta(0)
    assert parse_capture_time("2026-11-27T10:00:00Z").hour == 10


@pytest.mark.parametrize("value", ["ok-id_1", "acq:2026-11-27T10:00:00.5", "a" * 128])
def test_reasonable_client_job_ids_are_accepted(value):
    assert parse_job_id(value) == value


@pytest.mark.parametrize("value", ["has space", "-leading", "a" * 129, "slash/inside", 42])
def test_unsafe_client_job_ids_are_refused(value):
    with pytest.raises(CaptureError):
        parse_job_id(value)


def test_digest_depends_on_every_byte():
    array = iq()
    changed = array.copy()
    changed[2, 999] += 1e-3
    assert iq_digest(array) != iq_digest(changed)


def test_out_of_range_json_numbers_are_refused_as_infinite():
    huge = [[1e300, 0.0] * 600] * 3
    with pytest.raises(CaptureError, match="infinite"):
        validate_iq(decode_json_iq(huge), LIMITS)


@pytest.mark.parametrize(
    "rows", [[[[None], [None]]] * 3, [[[0.1, 0.2], [0.3, 0.4]]] * 3, [[0.1, [0.2]]] * 3]
)
def test_json_iq_rows_of_lists_are_refused_as_not_numbers(rows):
    """Rows of lists of equal length made a 3-D array whose complex view failed: a 500."""
    with pytest.raises(CaptureError, match="rows must contain only numbers"):
        decode_json_iq(rows)


@pytest.mark.parametrize("value", [10**400, -(10**400), 10**309], ids=["1e400", "-1e400", "1e309"])
def test_a_json_integer_past_floats_range_is_out_of_range_not_an_overflow(value):
    """``float()`` of a JSON integer of hundreds of digits raised OverflowError: a 500. The
    message shows the number cut short."""
    with pytest.raises(CaptureError, match=r"between 1000 and 1e\+07; got -?1000+\.\.\.0+$"):
        parse_number("sample_rate_hz", value, low=1_000, high=10_000_000)


def test_the_submit_command_reads_a_file_as_the_shim_reads_a_body(tmp_path, capsys):
    """``heimdall-inference submit`` refuses a damaged file with the shim's reason and exit
    status 2, before contacting any service; a good file reads back whole."""
    from inference_worker.cli.jobs import read_capture

    good, cut = tmp_path / "good.npy", tmp_path / "cut.npy"
    np.save(good, iq())
    cut.write_bytes(npy_with_header(b"{'descr': '<c8', 'fortran_order': False, 'shape': (3, 2), "))
    np.testing.assert_array_equal(read_capture(Namespace(file=str(good), raw=False)), iq())
    for path, fragment in ((cut, "not a valid .npy"), (tmp_path / "none.npy", "cannot read")):
        with pytest.raises(SystemExit) as exit_info:
            read_capture(Namespace(file=str(path), raw=False))
        assert exit_info.value.code == 2
        assert fragment in capsys.readouterr().err
