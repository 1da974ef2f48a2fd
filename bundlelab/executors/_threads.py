"""Intra-op threads of a task, set explicitly so that results do not depend on where it runs.

torch's CPU kernels split their reductions by thread, so a sum over a batch can differ in its
last bits between 1 and 2 threads, and a training run drifts from there.  Each executor gives
its workers another default (this process: all cores; "processes": the cores shared among the
workers; Ray: ``OMP_NUM_THREADS`` = the task's ``num_cpus``), so a task that must give the same
result wherever it runs sets its threads itself with :func:`torch_threads`.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator

from .._errors import require
from .._validation import check_int


@contextlib.contextmanager
def torch_threads(threads: int | None = 1) -> Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads, then restore the previous number.

    Nothing happens where torch is not installed, nor for ``threads=None``.

    Parameters
    ----------
    threads : int or None, default=1
        None leaves the threads as they are (a task whose threads need not be pinned, e.g. one
        on a GPU or on another backend than torch).

    Examples
    --------
    >>> with torch_threads(1):       # doctest: +SKIP
    ...     result = fit(spec, data, config=config, directory=folder)
    """
    if threads is None:
        yield
        return
    threads = check_int("threads", threads, low=1)
    if importlib.util.find_spec("torch") is None:
        yield
        return
    # imported here: the trial imports torch only later, and its first operation must already
    # run on these threads
    torch = require("torch", purpose="torch_threads", extra="torch")

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
