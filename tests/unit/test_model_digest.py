"""A model file's digest is read again only when the file has changed (its inode, size or
times), as git's index does: health checks and reloads hash the model file each time."""

from __future__ import annotations

import hashlib
import time

import pytest

from inference_worker.core import contract


@pytest.fixture
def reads(monkeypatch) -> list[int]:
    """Each digest computed (rather than remembered), counted; no digest kept from before."""
    counted: list[int] = []

    class Counting:
        @staticmethod
        def sha256():
            counted.append(1)
            return hashlib.sha256()

    monkeypatch.setattr(contract, "hashlib", Counting)
    monkeypatch.setattr(contract, "_DIGESTS", {})
    return counted


def later(monkeypatch, seconds: float) -> None:
    now = time.time_ns() + int(seconds * 1e9)
    monkeypatch.setattr(contract.time, "time_ns", lambda: now)


def test_a_settled_file_is_read_once(tmp_path, reads, monkeypatch):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"weights" * 1000)
    later(monkeypatch, 10)
    first = contract.file_sha256(model)
    assert contract.file_sha256(model) == first == hashlib.sha256(b"weights" * 1000).hexdigest()
    assert len(reads) == 1


def test_a_file_rewritten_at_the_same_size_is_read_again(tmp_path, reads, monkeypatch):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"a" * 4096)
    later(monkeypatch, 10)
    before = contract.file_sha256(model)
    model.write_bytes(b"b" * 4096)  # its change time moves, whatever its modification time says
    assert contract.file_sha256(model) != before
    assert contract.file_sha256(model) == hashlib.sha256(b"b" * 4096).hexdigest()


def test_a_file_replaced_by_a_rename_is_read_again(tmp_path, reads, monkeypatch):
    model, other = tmp_path / "model.onnx", tmp_path / "other.onnx"
    model.write_bytes(b"a" * 4096)
    other.write_bytes(b"c" * 4096)
    later(monkeypatch, 10)
    contract.file_sha256(model)
    other.replace(model)
    assert contract.file_sha256(model) == hashlib.sha256(b"c" * 4096).hexdigest()


def test_a_file_just_written_is_read_each_time(tmp_path, reads):
    """Within a step of the kernel's clock a rewrite at the same size could keep its times."""
    model = tmp_path / "model.onnx"
    model.write_bytes(b"weights")
    contract.file_sha256(model)
    contract.file_sha256(model)
    assert len(reads) == 2


def test_the_digests_kept_are_bounded(tmp_path, reads, monkeypatch):
    later(monkeypatch, 10)
    for n in range(contract._DIGESTS_KEPT + 5):
        model = tmp_path / f"model-{n}.onnx"
        model.write_bytes(b"w" * n)
        contract.file_sha256(model)
    assert 0 < len(contract._DIGESTS) <= contract._DIGESTS_KEPT
