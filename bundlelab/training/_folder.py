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

Resuming is allowed only for the same run: the state records the options that make the run
(backend, spec, training options, ...), and :meth:`RunFolder.resume` refuses any change
outside :data:`RESUMABLE_OPTIONS`, the one list of what may change between a run and its
resume, for training, the auto-tune and the search alike.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import __version__
from .._atomic import atomic_write_text, replace_durably
from .._errors import BundleLabError, MissingDependencyError
from .._validation import checked_keywords

#: Options that may differ between a run and its resume, with why; any other difference
#: would change what the run computes, so :meth:`RunFolder.resume` refuses it.  Progress
#: display is not part of a run at all.
RESUMABLE_OPTIONS: dict[str, str] = {
    "epochs": "the length of a training run: it may grow, not fall below the epochs done",
    "search_epochs": "the length of a search's sampling phase: it may grow likewise",
    "device": "where the run computes",
}

LOCK_FILE = ".lock"


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

    Examples
    --------
    >>> with RunFolder("runs/a", "run.json", "my.run/1") as folder:   # doctest: +SKIP
    ...     state = folder.resume({"config": config.to_dict()}, length=config.epochs)
    ...     folder.commit(epoch, ".pt", trainee.save, {**options, "epochs_done": epoch})
    """

    @checked_keywords
    def __init__(self, directory: str | os.PathLike, state_file: str, format: str, *,
                 kind: str = "run") -> None:
        self.directory = Path(directory)
        self.path = self.directory / state_file
        self.format = format
        self.kind = kind
        self.checkpoint: str | None = None
        self._lock = FolderLock(directory)

    # -- the lock -------------------------------------------------------------------------

    def lock(self) -> RunFolder:
        """Take the folder's lock (see :class:`FolderLock`)."""
        self._lock.acquire()
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
        """The saved state (None when the folder holds none), checked for format and version."""
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
        return state

    def resume(self, options: dict[str, Any], *, length: int | None = None) -> dict[str, Any] | None:
        """The saved state when the folder holds a run of ``options``; None when it holds none.

        ``options`` are what make the run (``backend``, ``spec``, ``config``, ...), stored at
        the top of the state; nested dicts are compared option by option.  Any difference
        outside :data:`RESUMABLE_OPTIONS` is refused in one line, and so is a ``length``
        (epochs) below the state's ``epochs_done``.
        """
        state = self.read()
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


class FolderLock:
    """The exclusive lock of a folder: ``directory/.lock``, ``flock``-ed, naming its holder.

    :meth:`acquire` creates the folder and takes the lock without waiting, or raises a
    one-line :class:`BundleLabError` naming the folder and the process that holds it (pid and
    host).  The lock is held until :meth:`release`, the end of a ``with`` block, the lock
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
            self.directory.mkdir(parents=True, exist_ok=True)
            # closing the lock file releases the lock; a finalizer runs at most once
            self._release = weakref.finalize(self, os.close, _lock(self.directory))
        return self

    def release(self) -> None:
        """Release the lock (nothing if it is not held)."""
        if self._release is not None:
            self._release()

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _holder() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()}"


def _lock(directory: Path) -> int:
    """Take the exclusive lock of ``directory`` without waiting; return the lock file's
    descriptor (closing it releases the lock)."""
    path = directory / LOCK_FILE
    try:  # never through a link: the lock file is truncated below
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError as exc:
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
