"""Atomic file writes: a reader never sees a half-written result or checkpoint.

Each write is flushed to the disk (``fsync``) before the rename that publishes it, and the
rename itself is made durable by syncing the folder, so after a power cut a file that names
another (a run folder's state naming its checkpoint) never names one that was lost.

What the user named is what gets written: a symbolic link is resolved first (the link stays a
link and its target gets the new content, atomically), and a pipe or a device (``-o
/dev/null``, a FIFO read by another process) is written through, as a shell's ``>`` would,
instead of being replaced by a regular file.  A folder, a socket or a path that cannot be
resolved is refused in one line.  Temporary files are named ``.NAME.XXXXXXXX.tmp`` beside the
file they become, so a leftover of a killed write is recognisable (run folders remove theirs).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Iterator

from ._errors import BundleLabError


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
    """``os.replace`` a complete file over ``target``: sync it, rename it, sync the folder.

    ``target`` is a name of bundlelab's own (a run folder's checkpoint): a link planted there
    is replaced, never followed."""
    sync_file(source)
    os.replace(source, target)
    sync_directory(Path(target).parent)


#: errors of a write that say nothing about the data written, only about where it goes
_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
                 errno.EIO}


def cannot_write(path: str | os.PathLike, exc: OSError) -> BundleLabError:
    """The one-line error of a failed write of ``path``."""
    return BundleLabError(f"cannot write {path}: {exc.strerror or exc}")


@contextlib.contextmanager
def _write_errors(path: str | os.PathLike) -> Iterator[None]:
    """Word the OSErrors of writing ``path`` (disk full, read-only, ...) in one line."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _WRITE_ERRORS:
            raise
        raise cannot_write(path, exc) from None


def output_target(path: str | os.PathLike) -> tuple[Path, bool]:
    """Where a write of ``path`` goes, and whether it is atomic.

    ``(the resolved path, True)`` for a regular file or a new one (symbolic links, of the file
    and of its folders, resolved); ``(the resolved path, False)`` for a pipe or a device, which
    is written through.  A folder, a socket or a link loop is a one-line
    :class:`BundleLabError`.
    """
    real = Path(os.path.realpath(path))
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        return real, True
    except OSError as exc:
        raise cannot_write(path, exc) from None
    if stat.S_ISREG(mode):
        return real, True
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return real, False
    what = "a folder" if stat.S_ISDIR(mode) else "not a regular file, a pipe or a device"
    raise BundleLabError(f"cannot write {path}: it is {what}; name a file")


@contextlib.contextmanager
def _written_through(path: str | os.PathLike) -> Iterator[None]:
    """Word an OSError of a write through to a pipe or device in one line."""
    try:
        yield
    except OSError as exc:
        raise cannot_write(path, exc) from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = ".tmp") -> Iterator[str]:
    """A path for a writer that takes a path (``savefig``, ``torch.save``): a temporary file
    beside ``path``'s resolved target, moved over it (synced) when the block ends without an
    exception; or the pipe or device ``path`` names itself, written through.

    The temporary file is removed on an exception, and ``path`` is then untouched.
    """
    target, atomic = output_target(path)
    if not atomic:
        with _written_through(path):
            yield str(target)
        return
    with _write_errors(path):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
        os.close(fd)
        try:
            give_default_mode(tmp)
            yield tmp
            replace_durably(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path`` and move it over ``path`` on success.

    The rename is atomic on POSIX and Windows, so ``path`` holds either the old or the new
    content, never a mix; the content is synced before the rename and the folder after it.
    On an exception the temporary file is removed and ``path`` is untouched.  A symbolic link
    is resolved first (its target is replaced, the link stays); a pipe or a device is opened
    and written through (see :func:`output_target`).
    """
    target, atomic = output_target(path)
    if not atomic:
        with _written_through(path):
            handle = open(target, mode, **kwargs)  # noqa: SIM115 - closed below
            try:
                yield handle
                handle.flush()
            finally:
                try:
                    handle.close()
                except OSError:  # the flush above failed already, or the body raised
                    pass
        return
    with _write_errors(path):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            give_default_mode(tmp)
            with os.fdopen(fd, mode, **kwargs) as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
            sync_directory(target.parent)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8); see :func:`atomic_open`."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
