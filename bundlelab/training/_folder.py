"""A run folder: a JSON state file and the checkpoint it names, replaced crash-safely.

Each commit writes the new checkpoint under a new name, then replaces the state file
atomically, and only then removes the previous checkpoint, so at every instant the state file
names a complete checkpoint of the epochs it lists.  Training runs and budgeted searches both
keep their folders this way.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import __version__
from .._atomic import atomic_write_text
from .._errors import BundleLabError


class RunFolder:
    """``directory/state_file`` (JSON with ``format`` and ``bundlelab`` version keys) and the
    checkpoint named by its ``checkpoint`` key.

    Parameters
    ----------
    directory : path
    state_file : str
        E.g. ``"run.json"``.
    format : str
        The state's format tag, e.g. ``"bundlelab.run/1"``; another tag is refused.
    """

    def __init__(self, directory: str | os.PathLike, state_file: str, format: str) -> None:
        self.directory = Path(directory)
        self.path = self.directory / state_file
        self.format = format
        self.checkpoint: str | None = None

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
        self.checkpoint = state.get("checkpoint")
        return state

    def checkpoint_path(self) -> str | None:
        """The path of the checkpoint the state names, or None."""
        return None if self.checkpoint is None else str(self.directory / self.checkpoint)

    def write(self, state: dict[str, Any]) -> None:
        """Replace the state atomically (for folders without checkpoints of their own)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        state = {"format": self.format, "bundlelab": __version__, **state}
        atomic_write_text(self.path, json.dumps(state) + "\n")

    def commit(self, epoch: int, suffix: str, save: Callable[[str], None],
               state: dict[str, Any]) -> None:
        """Save the checkpoint of ``epoch`` with ``save(path)``, then ``state`` (which gets the
        ``format``, ``bundlelab`` and ``checkpoint`` keys), then drop the previous checkpoint."""
        self.directory.mkdir(parents=True, exist_ok=True)
        previous = self.checkpoint
        name = f"checkpoint-{epoch:04d}{suffix}"
        tmp = self.directory / f".{name}.tmp"
        save(str(tmp))
        os.replace(tmp, self.directory / name)
        self.checkpoint = name
        self.write({**state, "checkpoint": name})
        if previous and previous != name:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.directory / previous)
