"""Files and folders the training and evaluation tools write, each in one step: Ctrl-C, a crash
or a full disk leaves what was there before (a served model, a dataset cache), never a part of
the new one that a worker, the registry or the next run would take for whole.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def _umask() -> int:
    """This process's umask, read where Linux shows it (setting it to read it, the only way
    elsewhere, is not safe beside threads that create files)."""
    try:
        with open("/proc/self/status", encoding="utf-8", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def replace_file(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` through ``write`` into a file beside it, then rename that over ``path``.
    The file keeps the mode it had, or gets the mode a new file gets (not a temporary file's
    0600)."""
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.partial-", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def replace_text(path: Path, text: str) -> None:
    """:func:`replace_file` with ``text`` (UTF-8)."""
    replace_file(path, lambda file: file.write(text.encode()))


@contextmanager
def staged_folder(out: Path, *, copy: bool = False) -> Iterator[Path]:
    """A folder beside ``out`` to write into (with ``copy``, holding ``out``'s files), put in
    ``out``'s place once the block ends without an exception; otherwise removed, ``out`` left
    as it was. ``out`` is named through a link (the link's target is replaced).

    Raises:
        NotADirectoryError: ``out`` exists and is not a folder.
    """
    if out.is_symlink():
        out = out.resolve()
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} is not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        os.chmod(work, 0o777 & ~_umask())
        if copy and out.exists():
            shutil.copytree(out, work, dirs_exist_ok=True)
        yield work
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if out.exists() and exchange(work, out):  # one step: ``out`` is never missing
        shutil.rmtree(work, ignore_errors=True)  # the former folder, now at ``work``
        return
    previous = work.with_name(work.name.replace(".partial-", ".previous-"))
    if out.exists():
        out.rename(previous)
    work.rename(out)
    shutil.rmtree(previous, ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one step (Linux's ``renameat2`` with ``RENAME_EXCHANGE``); False
    where the system or the file system cannot, the paths left as they were."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # not Linux, or a C library before glibc 2.28
        return False
    path, directory = ctypes.c_char_p, ctypes.c_int
    renameat2.argtypes = [directory, path, directory, path, ctypes.c_uint]
    done = renameat2(
        _AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE
    )
    return done == 0
