"""Whether a run shows its progress, and the progress bar of an epoch's batches."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .._validation import check_bool

#: seconds between two redraws of a progress bar: a person sees it move, and the epoch spends
#: a few redraws on it instead of rich's ten per second from a thread of its own
REFRESH_SECONDS = 0.5


def resolve_progress(progress: Any) -> bool:
    """``progress`` as a bool; None (the default of ``fit``, ``autotune``, ``search`` and
    ``sweep``): True when stderr is a terminal, so a script's log files and pipes get no
    progress bars while a person at a terminal sees them."""
    if progress is None:
        stream = sys.stderr
        try:
            return bool(stream is not None and stream.isatty())
        except (AttributeError, ValueError):  # a replaced or closed stderr
            return False
    return check_bool("progress", progress)


@contextlib.contextmanager
def batch_progress(description: str, total: int, *, show: bool = True,
                   refresh_seconds: float = REFRESH_SECONDS
                   ) -> Iterator[Callable[[Iterable], Iterator]]:
    """A transient progress bar of an epoch's ``total`` batches; yields ``advance``, which
    wraps the batches and moves the bar as each one is handed out.

    The bar is redrawn from the training loop itself, at most every ``refresh_seconds``:
    rich's own refresh thread (ten redraws a second) took the interpreter lock from the steps
    and cost 6-7% of the CPU time of a small net's epoch on 2 cores (plain-10 x0.25 on the
    digits).  ``show=False`` yields an ``advance`` that hands the batches through untouched
    (no rich import).

    Parameters
    ----------
    description : str
    total : int
        Batches in the epoch.
    show : bool, default=True
    refresh_seconds : float, default=REFRESH_SECONDS

    Yields
    ------
    callable
        ``advance(batches)``: an iterator over ``batches``.
    """
    if not show:
        yield lambda batches: iter(batches)
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    # on stderr with the epoch lines: stdout carries a command's results, and a bar there left
    # a blank line per epoch in a redirected stdout
    with Progress("[progress.description]{task.description}", BarColumn(),
                  MofNCompleteColumn(), TimeRemainingColumn(), transient=True,
                  auto_refresh=False, console=Console(stderr=True)) as bar:
        task = bar.add_task(escape(description), total=total)  # drawn here; "[x]" is a name

        def advance(batches: Iterable) -> Iterator:
            drawn = time.monotonic()
            for item in batches:
                yield item
                bar.advance(task)
                now = time.monotonic()
                if now - drawn >= refresh_seconds:
                    bar.refresh()
                    drawn = now

        yield advance
