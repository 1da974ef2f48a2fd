"""Atomic file writes: a reader never sees a half-written result or checkpoint."""

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


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path`` and move it over ``path`` on success.

    The rename is atomic on POSIX and Windows, so ``path`` holds either the old or the new
    content, never a mix; on an exception the temporary file is removed and ``path`` is
    untouched.
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
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
