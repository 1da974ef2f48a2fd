"""Resumable runs, written once: training runs, auto-tunes and searches keep their folders here.

A run folder holds a JSON state file and the checkpoint it names.  Each commit writes the new
checkpoint under a new name and syncs it to the disk, then replaces the state file atomically
(synced too), and only then removes the previous checkpoint, so at every instant the state
file names a complete checkpoint of the epochs it lists.

A process works in a folder only while it holds the folder's lock (``.lock``, an exclusive
``flock`` naming its holder): a second process on the same folder stops at once with one
line naming the folder and the holder, instead of interleaving its commits.  The kernel
drops the lock when its process ends, however it ends, so a dead process never blocks a
folder.

The state file is checked before anything is done with it: it names its checkpoint only
inside its folder (a bare file name, a regular file, present), lists as many epoch records as
it says epochs are done, and names a checkpoint whenever an epoch is done; anything else is
refused in one line naming the field.  While it holds the lock, a process removes the
leftovers of a killed one: bundlelab's temporary files (``.NAME.XXXXXXXX.tmp``,
``.checkpoint-0003.pt.tmp``, the size probe's ``.weights-XXXXXXXX.pt``) and checkpoints the
state does not name, only in the folder itself and only by those patterns.  A folder that
cannot be written is refused before any training (a finished training run in it can still be
read and reported: reading needs no write).

Resuming is allowed only for the same run: the state records the options that make the run
(backend, spec, training options, ...), and :meth:`RunFolder.resume` refuses any change
outside :data:`RESUMABLE_OPTIONS`, the one list of what may change between a run and its
resume, for training, the auto-tune and the search alike.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import socket
import stat
import tempfile
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import __version__
from .._atomic import atomic_write_text, replace_durably
from .._errors import BundleLabError, MissingDependencyError
from .._validation import check_bool, checked_keywords, short_repr

#: Options that may differ between a run and its resume, with why; any other difference
#: would change what the run computes, so :meth:`RunFolder.resume` refuses it.  Progress
#: display is not part of a run at all.
RESUMABLE_OPTIONS: dict[str, str] = {
    "epochs": "the length of a training run: it may grow, not fall below the epochs done "
              "(under a learning-rate schedule other than 'constant' it may not change)",
    "search_epochs": "the length of a search's sampling phase: it may grow likewise",
    "device": "where the run computes",
}

LOCK_FILE = ".lock"

#: bundlelab's own leftovers of an interrupted write, removed by the next run of the folder:
#: atomic writes' temporary files (``.run.json.k2j4x_0a.tmp``; the figures' older
#: ``.entropy.png.k2j4x_0a.png``), an unfinished checkpoint (``.checkpoint-0003.pt.tmp``) and
#: the checkpoint-size probe (``.weights-k2j4x_0a.pt``)
LEFTOVER = re.compile(
    r"\A(?:\..+\.[a-z0-9_]{8}\.(?:tmp|png)|\.checkpoint-\d+\..+\.tmp|\.weights-[a-z0-9_]{8}\..+)\Z"
)
#: a checkpoint's name (removed when the state names another one)
CHECKPOINT = re.compile(r"\Acheckpoint-\d{4,}\..+\Z")
#: errors that say a folder cannot be written (as opposed to a bug or a missing folder)
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


class RunFolder:
    """``directory/state_file`` (JSON with ``format`` and ``bundlelab`` version keys), the
    checkpoint named by its ``checkpoint`` key, and the folder's lock.

    Parameters
    ----------
    directory : path
    state_file : str
        E.g. ``"run.json"``.
    format : str
        The state's format tag, e.g. ``"bundlelab.run/1"``; another tag is refused.
    kind : str, default="run"
        What the folder holds, for messages: ``"training run"``, ``"search"``, ...
    epochs : bool, default=True
        The state lists epochs: ``epochs_done`` (an int >= 0), ``history`` (that many records)
        and ``checkpoint`` (the file of the last epoch), checked by :meth:`read`.  False for
        states of another shape (an auto-tune's), which their owner checks.

    Examples
    --------
    >>> with RunFolder("runs/a", "run.json", "my.run/1") as folder:   # doctest: +SKIP
    ...     state = folder.resume({"config": config.to_dict()}, length=config.epochs)
    ...     folder.commit(epoch, ".pt", trainee.save, {**options, "epochs_done": epoch})
    """

    @checked_keywords
    def __init__(self, directory: str | os.PathLike, state_file: str, format: str, *,
                 kind: str = "run", epochs: bool = True) -> None:
        self.directory = Path(directory)
        self.path = self.directory / state_file
        self.format = format
        self.kind = kind
        self.epochs = check_bool("epochs", epochs)
        self.checkpoint: str | None = None
        #: False when the folder was opened for reading only (see :meth:`lock`)
        self.writable = True
        self._lock = FolderLock(directory)

    # -- the lock -------------------------------------------------------------------------

    def lock(self, *, read_only: bool = False) -> RunFolder:
        """Take the folder's lock (see :class:`FolderLock`), which also checks that the
        folder can be written.

        With ``read_only=True``, a folder that holds a state but cannot be written (a
        read-only file system, no permission) is opened for reading instead of refused:
        :attr:`writable` is then False, no lock is held and nothing is cleaned or written
        (the owner refuses to go on unless its run is finished).
        """
        try:
            self._lock.acquire()
        except NotWritableError:
            if not (read_only and self.path.is_file()):
                raise
            self.writable = False
        return self

    def unlock(self) -> None:
        """Release the lock (nothing if it is not held)."""
        self._lock.release()

    @property
    def locked(self) -> bool:
        return self._lock.held

    def __enter__(self) -> RunFolder:
        return self.lock()

    def __exit__(self, *exc: Any) -> None:
        self.unlock()

    # -- the state ------------------------------------------------------------------------

    def read(self) -> dict[str, Any] | None:
        """The saved state (None when the folder holds none), checked for format, version and
        (with ``epochs``) its epochs and checkpoint."""
        if not self.path.exists():
            return None
        try:
            state = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BundleLabError(
                f"cannot read {self.path}: {exc}; remove the folder to start over"
            ) from None
        if not isinstance(state, dict) or state.get("format") != self.format:
            raise BundleLabError(
                f"{self.path} is not a bundlelab state of format {self.format!r}; use an empty folder"
            )
        if state.get("bundlelab") != __version__:
            raise BundleLabError(
                f"{self.directory} was written by bundlelab {state.get('bundlelab')}, this is "
                f"{__version__}; resume it with that version or start a new folder"
            )
        self.checkpoint = _checkpoint_name(self.path, state.get("checkpoint"))
        if self.epochs:
            self._check_epochs(state)
        return state

    def state_error(self, field: str, expected: str, value: Any) -> BundleLabError:
        """The one-line error of a malformed ``field`` of the state file."""
        return BundleLabError(
            f"{self.path} is malformed: {field!r} must be {expected}, got {short_repr(value)}; "
            "remove the folder to start over"
        )

    def _check_epochs(self, state: dict[str, Any]) -> None:
        done = state.get("epochs_done")
        if isinstance(done, bool) or not isinstance(done, int) or done < 0:
            raise self.state_error("epochs_done", "an int >= 0", done)
        history = state.get("history")
        if not isinstance(history, list) or len(history) != done:
            raise self.state_error("history", f"a list of {done} epoch records", history)
        for i, record in enumerate(history):
            if not isinstance(record, dict) or record.get("epoch") != i + 1:
                raise self.state_error(f"history[{i}]", f"the record of epoch {i + 1}", record)
        if self.checkpoint is None:
            if done:
                raise BundleLabError(
                    f"{self.path} lists {done} epochs done but names no checkpoint, so they "
                    "cannot be resumed; remove the folder to start over"
                )
            return
        try:
            regular = stat.S_ISREG(os.lstat(self.directory / self.checkpoint).st_mode)
        except FileNotFoundError:
            raise BundleLabError(
                f"{self.path} names the checkpoint {self.checkpoint!r}, which is missing; "
                "remove the folder to start over"
            ) from None
        if not regular:
            raise BundleLabError(
                f"{self.path} names the checkpoint {self.checkpoint!r}, which is not a regular "
                "file (a link or a folder); remove the folder to start over"
            )

    def resume(self, options: dict[str, Any], *, length: int | None = None) -> dict[str, Any] | None:
        """The saved state when the folder holds a run of ``options``; None when it holds none.

        ``options`` are what make the run (``backend``, ``spec``, ``config``, ...), stored at
        the top of the state; nested dicts are compared option by option.  Any difference
        outside :data:`RESUMABLE_OPTIONS` is refused in one line, and so is a ``length``
        (epochs) below the state's ``epochs_done``.
        """
        state = self.read()
        if self.locked:
            clean_leftovers(self.directory, keep=self.checkpoint if state is not None else None,
                            checkpoints=state is not None)
        if state is None:
            return None
        changes = _changes(state, json.loads(json.dumps(options)))
        if changes:
            raise BundleLabError(
                f"{self.directory} holds {self._a_kind} with other options ({'; '.join(changes)});"
                f" a resume may change only {', '.join(RESUMABLE_OPTIONS)}: use the same "
                "options or another folder"
            )
        done = state.get("epochs_done", 0)
        if length is not None and isinstance(done, int) and done > length:
            raise BundleLabError(
                f"{self.directory} holds {self._a_kind} that already ran {done} epochs, more than "
                f"the {length} asked for; a resume may lengthen a run, not shorten it"
            )
        return state

    @property
    def _a_kind(self) -> str:
        return f"{'an' if self.kind[:1] in 'aeiou' else 'a'} {self.kind}"

    def checkpoint_path(self) -> str | None:
        """The path of the checkpoint the state names, or None."""
        return None if self.checkpoint is None else str(self.directory / self.checkpoint)

    def write(self, state: dict[str, Any]) -> None:
        """Replace the state atomically (for folders without checkpoints of their own)."""
        self._check_locked()
        state = {"format": self.format, "bundlelab": __version__, **state}
        atomic_write_text(self.path, json.dumps(state) + "\n")

    def commit(self, epoch: int, suffix: str, save: Callable[[str], None],
               state: dict[str, Any]) -> None:
        """Save the checkpoint of ``epoch`` with ``save(path)`` and sync it, then ``state``
        (which gets the ``format``, ``bundlelab`` and ``checkpoint`` keys), then drop the
        previous checkpoint."""
        self._check_locked()
        previous = self.checkpoint
        name = f"checkpoint-{epoch:04d}{suffix}"
        tmp = self.directory / f".{name}.tmp"
        save(str(tmp))
        replace_durably(tmp, self.directory / name)
        self.checkpoint = name
        self.write({**state, "checkpoint": name})
        if previous and previous != name:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.directory / previous)

    def _check_locked(self) -> None:
        if not self.locked:
            raise RuntimeError(f"bundlelab wrote into {self.directory} without its lock")


class HoldsRunFolder:
    """The lock lifetime of an object that works in a :class:`RunFolder` held as ``_folder``
    (None without a folder): ``close()`` releases it, and a ``with`` block closes."""

    _folder: RunFolder | None = None

    def close(self) -> None:
        """Release the folder's lock (the run can be resumed later by any process)."""
        if self._folder is not None:
            self._folder.unlock()

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def draw_optional(draw: Callable[[], Any], what: str) -> bool:
    """Run ``draw()``, which saves an optional figure of a finished run; without matplotlib,
    warn in one line and go on (a missing optional plot never fails a finished run).  Returns
    whether the figure was drawn."""
    try:
        draw()
    except MissingDependencyError as exc:
        warnings.warn(f"{what} not drawn: {exc}", stacklevel=2)
        return False
    return True


def clean_leftovers(directory: str | os.PathLike, *, keep: str | None = None,
                    checkpoints: bool = False) -> list[str]:
    """Remove bundlelab's leftovers of a killed process from ``directory`` (not below it):
    files matching :data:`LEFTOVER` and, with ``checkpoints``, checkpoints other than
    ``keep``.  Call it only while holding the folder's lock.  Returns the names removed."""
    removed = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return removed
    for entry in entries:
        name = entry.name
        if name == keep or not (LEFTOVER.match(name)
                                or (checkpoints and CHECKPOINT.match(name))):
            continue
        if entry.is_dir(follow_symlinks=False):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)  # a link is removed, never followed
            removed.append(name)
    return removed


def _checkpoint_name(state_path: Path, name: Any) -> str | None:
    """The checkpoint's file name, which must lie in the state's own folder."""
    if name is None:
        return None
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise BundleLabError(
            f"{state_path} names the checkpoint {name!r}, not a file of its own folder; "
            "remove the folder to start over"
        )
    return name


def _changes(saved: dict[str, Any], options: dict[str, Any]) -> list[str]:
    """``name=old, now new`` for every option of ``options`` that differs from ``saved``,
    except :data:`RESUMABLE_OPTIONS`; dicts (training or search options) are compared key by
    key, and the spec as a whole."""
    changes = []
    for key, value in options.items():
        old = saved.get(key)
        if key == "spec":
            if old != value:
                changes.append(_spec_change(old, value))
        elif isinstance(value, dict):
            old = old if isinstance(old, dict) else {}
            for name in [*value, *(k for k in old if k not in value)]:
                if name not in RESUMABLE_OPTIONS and old.get(name) != value.get(name):
                    changes.append(f"{name}={old.get(name)!r}, now {value.get(name)!r}")
        elif key not in RESUMABLE_OPTIONS and old != value:
            changes.append(f"{key}={old!r}, now {value!r}")
    return changes


def _spec_change(old: Any, new: dict[str, Any]) -> str:
    old_name = old.get("name") if isinstance(old, dict) else None
    if old_name == new.get("name"):
        return f"spec {old_name!r} with other contents"
    return f"spec {old_name!r}, now {new.get('name')!r}"


# -- the lock -------------------------------------------------------------------------------


class NotWritableError(BundleLabError):
    """A folder that cannot be written (read-only file system, no permission)."""


class FolderLock:
    """The exclusive lock of a folder: ``directory/.lock``, ``flock``-ed, naming its holder.

    :meth:`acquire` creates the folder and takes the lock without waiting, or raises a
    one-line :class:`BundleLabError` naming the folder and the process that holds it (pid and
    host); then it checks that the folder can be written (a file created and removed), so a
    read-only folder is refused before any work, not after the first epoch
    (:class:`NotWritableError`).  The lock is held until :meth:`release`, the end of a ``with`` block, the lock
    object's collection, or the end of the process (the kernel drops it however the process
    ends, so a dead process never blocks the folder).  Two locks of one folder exclude each
    other within one process too.

    Parameters
    ----------
    directory : path
        The folder; created by :meth:`acquire` if missing.
    """

    @checked_keywords
    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self._release: weakref.finalize | None = None

    @property
    def held(self) -> bool:
        return self._release is not None and self._release.alive

    def acquire(self) -> FolderLock:
        """Take the lock now or raise :class:`BundleLabError` naming its holder."""
        if not self.held:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise _not_writable(self.directory, exc) from None
            # closing the lock file releases the lock; a finalizer runs at most once
            self._release = weakref.finalize(self, os.close, _lock(self.directory))
            try:
                _probe_writable(self.directory)
            except BaseException:
                self.release()
                raise
        return self

    def release(self) -> None:
        """Release the lock (nothing if it is not held)."""
        if self._release is not None:
            self._release()

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _not_writable(directory: Path, exc: OSError) -> BundleLabError:
    cls = NotWritableError if exc.errno in _NOT_WRITABLE else BundleLabError
    return cls(f"cannot write in {directory}: {exc.strerror or exc}; use another folder")


def _probe_writable(directory: Path) -> None:
    """Create and remove a file in ``directory`` (named as an atomic write's temporary file,
    so a leftover is cleaned), or raise :class:`NotWritableError`."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", suffix=".tmp", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise _not_writable(directory, exc) from None


def _holder() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()}"


def _lock(directory: Path) -> int:
    """Take the exclusive lock of ``directory`` without waiting; return the lock file's
    descriptor (closing it releases the lock)."""
    path = directory / LOCK_FILE
    try:  # never through a link: the lock file is truncated below
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError as exc:
        if exc.errno in _NOT_WRITABLE:
            raise _not_writable(directory, exc) from None
        raise BundleLabError(
            f"cannot lock {directory}: {path.name}: {exc.strerror}; use another folder"
        ) from None
    try:
        _try_lock(fd)
    except OSError:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 200).decode("utf-8", "replace").strip()
        holder = "".join(c if c.isprintable() else "?" for c in text) or "a process starting"
        os.close(fd)
        raise BundleLabError(
            f"{directory} is in use by another bundlelab process ({holder}); wait for it to "
            "end or use another folder"
        ) from None
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (_holder() + "\n").encode())
    return fd


try:
    import fcntl

    def _try_lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

except ImportError:  # pragma: no cover - Windows
    import msvcrt

    def _try_lock(fd: int) -> None:
        # a byte far past the holder's line, so that the line stays readable
        os.lseek(fd, 1 << 20, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
