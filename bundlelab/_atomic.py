"""Atomic file writes: a reader never sees a half-written result or checkpoint.

Each write is flushed to the disk (``fsync``) before the rename that publishes it, and the
rename itself is made durable by syncing the folder, so after a power cut a file that names
another (a run folder's state naming its checkpoint) never names one that was lost.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def give_default_mode(path: str | os.PathLike) -> None:
    """Give a ``mkstemp`` file (created 0600) the mode a plain ``open`` would have given it,
    so results written atomically are as readable as any other file of the user's."""
    os.chmod(path, 0o666 & ~_umask())


def sync_file(path: str | os.PathLike) -> None:
    """Flush ``path``'s content to the disk (for files written by someone else's ``save``)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_directory(path: str | os.PathLike) -> None:
    """Make the renames and unlinks done in the folder ``path`` durable (POSIX; folders
    cannot be opened on Windows, where the rename is durable once it returns)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - file systems that cannot sync folders
        pass
    finally:
        os.close(fd)


def replace_durably(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """``os.replace`` a complete file over ``target``: sync it, rename it, sync the folder."""
    sync_file(source)
    os.replace(source, target)
    sync_directory(Path(target).parent)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path`` and move it over ``path`` on success.

    The rename is atomic on POSIX and Windows, so ``path`` holds either the old or the new
    content, never a mix; the content is synced before the rename and the folder after it.
    On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    give_default_mode(tmp)
    try:
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        sync_directory(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
