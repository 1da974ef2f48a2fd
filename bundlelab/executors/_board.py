"""The state of a map's tasks, shown on stderr and written to a summary file.

One :class:`TaskBoard` per :meth:`Executor.map` call records, per task, its state (pending,
running, done, failed; interrupted when the map was stopped), its attempts, its last error
and the seconds its attempts took.  At every change it rewrites the summary file atomically
(a reader, or a second terminal running ``watch cat``, never sees half a file) and updates the
progress shown on stderr:

* beside a pool of workers, a transient rich bar (done of total, running, failed) that the
  retries' notes scroll above;
* in this process, where the task draws its own bars (a training's epochs), plain lines
  between tasks instead: two live displays on one terminal would overwrite each other.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from .._atomic import atomic_write_text

#: the summary file's format tag
SUMMARY_FORMAT = "bundlelab.tasks/1"
#: the longest error text kept per task (one line in the final error and in the summary)
ERROR_MAX_CHARS = 300

PENDING, RUNNING, DONE, FAILED, INTERRUPTED = "pending", "running", "done", "failed", "interrupted"


def error_text(exc: BaseException) -> str:
    """``"ValueError: boom"`` on one line, cut to :data:`ERROR_MAX_CHARS`."""
    message = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    if len(text) > ERROR_MAX_CHARS:
        text = text[: ERROR_MAX_CHARS - 3] + "..."
    return text


class TaskBoard:
    """Per-task state, progress on stderr and the summary file of one map.

    Parameters
    ----------
    names : list of str
        One per task, in task order.
    what : str
        What the tasks are, plural ("trials"), for the progress and the messages.
    summary : path or None
        The JSON file rewritten at every change.
    progress : bool
        Show the progress on stderr.
    live : bool
        A transient rich bar (tasks run elsewhere) rather than lines between tasks (tasks run
        in this process and may draw bars of their own).
    """

    def __init__(self, names: list[str], *, what: str, summary: str | os.PathLike | None,
                 progress: bool, live: bool) -> None:
        self.names = names
        self.what = what
        self.summary = summary
        self.states = [PENDING] * len(names)
        self.attempts = [0] * len(names)
        self.errors: list[str | None] = [None] * len(names)
        self.seconds = [0.0] * len(names)
        self._started = [0.0] * len(names)
        self._bar = None
        if progress and live:
            self._bar = _start_bar(self._description(), len(names))
        self._lines = progress and not live
        self._write()

    # -- counts ---------------------------------------------------------------------------

    def count(self, state: str) -> int:
        return self.states.count(state)

    @property
    def total(self) -> int:
        return len(self.names)

    def failed_indices(self) -> list[int]:
        return [i for i, state in enumerate(self.states) if state == FAILED]

    # -- changes --------------------------------------------------------------------------

    def start(self, i: int) -> None:
        """Task ``i`` starts an attempt."""
        self.states[i] = RUNNING
        self.attempts[i] += 1
        self._started[i] = time.perf_counter()
        self._changed()

    def done(self, i: int) -> None:
        self._stop(i, DONE)
        self._changed()
        if self._lines:
            self._note(f"{self.what}: {self.count(DONE)} of {self.total} done"
                       + (f", {self.count(FAILED)} failed" if self.count(FAILED) else ""))

    def retry(self, i: int, error: str, retries: int) -> None:
        """Task ``i``'s attempt failed with ``error`` and it will run again."""
        self._stop(i, PENDING)
        self.errors[i] = error
        self._changed()
        self._note(f"{self.what}: {self.names[i]!r} failed ({error}); retry "
                   f"{self.attempts[i]} of {retries}")

    def fail(self, i: int, error: str) -> None:
        """Task ``i``'s last attempt failed with ``error``."""
        self._stop(i, FAILED)
        self.errors[i] = error
        self._changed()
        self._note(f"{self.what}: {self.names[i]!r} failed after {self.attempts[i]} "
                   f"attempt{'s' if self.attempts[i] > 1 else ''} ({error})")

    def interrupt(self) -> None:
        """The map stops: the running tasks are abandoned."""
        for i, state in enumerate(self.states):
            if state == RUNNING:
                self._stop(i, INTERRUPTED)
        self._write()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def _stop(self, i: int, state: str) -> None:
        if self.states[i] == RUNNING:
            self.seconds[i] += time.perf_counter() - self._started[i]
        self.states[i] = state

    def _changed(self) -> None:
        self._write()
        if self._bar is not None:
            task = self._bar.task_ids[0]
            self._bar.update(task, completed=self.count(DONE) + self.count(FAILED),
                             description=self._description())

    # -- output ---------------------------------------------------------------------------

    def _description(self) -> str:
        failed = self.count(FAILED)
        return (f"{self.what}: {self.count(RUNNING)} running"
                + (f", {failed} failed" if failed else ""))

    def _note(self, line: str) -> None:
        """A line that stays (a retry, a failure): above the bar, or alone on stderr."""
        line = _printable(line)
        if self._bar is not None:
            from rich.text import Text

            self._bar.console.print(Text(line), highlight=False)
        elif self._lines:
            sys.stderr.write(f"bundlelab: {line}\n")
            sys.stderr.flush()

    def to_dict(self) -> dict[str, Any]:
        """What the summary file holds."""
        return {
            "format": SUMMARY_FORMAT, "what": self.what, "total": self.total,
            "done": self.count(DONE), "running": self.count(RUNNING),
            "failed": self.count(FAILED), "pending": self.count(PENDING),
            "tasks": [
                {"name": name, "state": state, "attempts": attempts, "last_error": error,
                 "seconds": round(seconds, 3)}
                for name, state, attempts, error, seconds in zip(
                    self.names, self.states, self.attempts, self.errors, self.seconds)
            ],
        }

    def _write(self) -> None:
        if self.summary is not None:
            atomic_write_text(self.summary, json.dumps(self.to_dict(), indent=1) + "\n")


def _printable(text: str) -> str:
    """``text`` with control characters escaped: task names and errors come from the user's
    tasks, and an escape sequence in one must not rewrite the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _start_bar(description: str, total: int):
    from rich import progress
    from rich.console import Console

    bar = progress.Progress(
        progress.TextColumn("{task.description}"), progress.BarColumn(),
        progress.MofNCompleteColumn(), progress.TextColumn("done"),
        progress.TimeElapsedColumn(), console=Console(stderr=True), transient=True,
    )
    bar.add_task(description, total=total)
    bar.start()
    return bar
