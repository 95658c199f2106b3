"""What the training and evaluation tools write appears whole or not at all: a model folder, a
model's ``model.json`` and a dataset cache survive a run that stops or fails while writing."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from inference_worker.core.contract import load_metadata
from inference_worker.science.datasets import Dataset
from inference_worker.science.files import exchange, replace_file, replace_text, staged_folder


def _left_beside(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p != path)


def test_a_file_replaced_is_the_old_one_or_the_new_one_never_a_part(tmp_path):
    path = tmp_path / "model.json"
    path.write_text("old")

    def half_then_stop(file) -> None:
        file.write(b'{"half": ')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        replace_file(path, half_then_stop)
    assert path.read_text() == "old" and _left_beside(path) == []

    replace_text(path, "new")
    assert path.read_text() == "new" and _left_beside(path) == []
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask  # not a temporary file's 0600
    fresh = tmp_path / "fresh.json"
    replace_text(fresh, "new")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~mask  # as a new file gets
    path.chmod(0o640)  # an operator's choice outlives a rewrite
    replace_text(path, "newer")
    assert path.read_text() == "newer" and stat.S_IMODE(path.stat().st_mode) == 0o640


def test_an_interrupted_dataset_save_leaves_no_cache_a_later_run_would_read(tmp_path, monkeypatch):
    """``np.savez`` wrote the cache in place: a save stopped part way left a truncated ``.npz``
    that the next training run took from the cache and failed on (``BadZipFile``)."""
    data = Dataset(**{f.name: np.full((2, 3), 1.5) for f in dataclasses.fields(Dataset)})
    path = tmp_path / "train-abc.npz"
    original = np.savez

    def stopped(file, **arrays) -> None:
        original(file, **arrays)
        raise KeyboardInterrupt  # the bytes written, the rename not done

    monkeypatch.setattr(np, "savez", stopped)
    with pytest.raises(KeyboardInterrupt):
        data.save(str(path))
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(np, "savez", original)
    data.save(str(path))
    assert [p.name for p in tmp_path.iterdir()] == ["train-abc.npz"]
    assert np.array_equal(Dataset.load(str(path)).truth_m, data.truth_m)


def test_a_staged_folder_takes_the_place_of_its_target_only_when_its_block_ends_well(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "model.json").write_text("old")
    with pytest.raises(RuntimeError), staged_folder(out, copy=True) as work:
        assert (work / "model.json").read_text() == "old"  # a copy to rewrite
        (work / "model.json").write_text("half")
        raise RuntimeError("stopped")
    assert (out / "model.json").read_text() == "old" and _left_beside(out) == []

    with staged_folder(out) as work:
        (work / "model.onnx").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx"]  # not mixed with the old
    assert _left_beside(out) == []

    link = tmp_path / "served"
    link.symlink_to(out)
    with staged_folder(link) as work:
        (work / "model.onnx").write_text("newer")
    assert link.is_symlink() and (link / "model.onnx").read_text() == "newer"

    with pytest.raises(NotADirectoryError), staged_folder(out / "model.onnx"):
        pass


def test_a_recalibration_that_fails_after_rewriting_the_graph_leaves_the_model_whole(
    model_dir, tmp_path
):
    """``write_scale`` rewrote ``model.onnx`` in place and then ``model.json``: a failure in
    between (here a radius factor of no level) left a graph whose sha256 its metadata did not
    name, and the model was refused from then on."""
    from tools.model_calibration import write_scale

    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    with pytest.raises(TypeError):
        write_scale(model, 1.1, {}, radius_scales={"68": 1.0})  # type: ignore[dict-item]
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before
    load_metadata(model, verify=True)

    version = write_scale(model, 1.1, {"world": "test"}, relabel=True, version="9.9.9")
    metadata = json.loads((model / "model.json").read_text())
    assert version == "9.9.9" == load_metadata(model, verify=True).version
    assert metadata["training"]["calibration"] == {"world": "test"}


def test_ctrl_c_during_a_recalibration_ends_it_in_one_line_and_leaves_the_model_whole(
    model_dir, tmp_path
):
    """Each process of the simulation's pool printed its own KeyboardInterrupt traceback, and
    the tool one more."""
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    tool = Path(__file__).resolve().parents[2] / "tools" / "recalibrate_model.py"
    process = subprocess.Popen(
        [sys.executable, str(tool), "--model", str(model)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    deadline = time.monotonic() + 120
    while len(children.read_text().split()) < 2:  # its pool simulates the captures
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)

    assert process.returncode == 130
    assert err == "\ninterrupted\n"
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_two_folders_are_swapped_in_one_step_or_left_as_they_were(tmp_path):
    """The staged folder takes its target's place in one step where the system can swap two
    paths (Linux): the target is never missing, as it was between two renames."""
    old, new = tmp_path / "model", tmp_path / ".model.partial-x"
    for folder, text in ((old, "old"), (new, "new")):
        folder.mkdir()
        (folder / "model.json").write_text(text)
    if not exchange(new, old):
        pytest.skip("this system cannot swap two paths in one step")
    assert (old / "model.json").read_text() == "new"
    assert (new / "model.json").read_text() == "old"
    assert not exchange(tmp_path / "missing", old)  # refused: nothing moved
    assert (old / "model.json").read_text() == "new"
