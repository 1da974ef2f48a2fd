"""The executor interface: run ``fn(task)`` for many tasks, retry the failures, report.

One loop (:meth:`Executor.map`) serves every executor: it keeps at most as many tasks in
flight as the executor has room for, retries a task that raised or whose worker died, lets
the other tasks finish when one fails for good, and then raises one line naming it.  An
executor only says how to start a task and how to wait for some to end (:meth:`_submit`,
:meth:`_wait`), so "inprocess", "processes" and "ray" share the retries, the progress and the
summary file, and behave alike.

Tasks that are trials keep their state in resumable run folders (bundlelab.training), so a
retry resumes from the last finished epoch instead of starting over.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .._errors import BundleLabError
from .._validation import check_bool, check_int, checked_keywords, short_repr
from ._board import TaskBoard, error_text

#: executor name -> "module:class", imported when chosen (Ray only when asked for)
EXECUTORS = {
    "inprocess": "bundlelab.executors._local:InProcessExecutor",
    "processes": "bundlelab.executors._local:ProcessExecutor",
    "ray": "bundlelab.executors._ray:RayExecutor",
}


class WorkerDied(Exception):
    """The process or node running a task died (killed, out of memory, crashed)."""


class TasksFailed(BundleLabError):
    """Some tasks still failed after their retries; the others finished.

    Attributes
    ----------
    failures : dict of str to str
        Task name -> its last error, in task order.
    results : list
        Every task's result in task order, None for the tasks that failed.
    """

    def __init__(self, message: str, failures: dict[str, str], results: list) -> None:
        super().__init__(message)
        self.failures = failures
        self.results = results

    def __reduce__(self):  # a task may map too: its error travels back whole
        return type(self), (str(self), self.failures, self.results)


class Executor:
    """Runs tasks somewhere: in this process, in local processes or on a Ray cluster.

    Use :func:`get_executor` to make one.  An executor is a context manager: leaving the
    ``with`` block releases its workers (it never shuts down a Ray it joined); :meth:`map`
    outside a ``with`` block releases them when it returns.

    Subclasses say where tasks run through :meth:`capacity` (how many tasks may be in flight)
    and three hooks: :meth:`_submit` (start one; returns a hashable handle), :meth:`_wait`
    (block until some end; their outcomes) and :meth:`_abort` (stop those in flight), plus
    :meth:`close`.

    Parameters
    ----------
    workers : int, optional
        How many tasks run at once.
    progress : bool or None, default=None
        Show done / running / failed / total on stderr; None: when stderr is a terminal.
    """

    #: the name :func:`get_executor` knows it by
    name = "executor"
    #: tasks run in this process (they may draw progress bars of their own)
    in_process = False

    def __init__(self, *, workers: int | None = None, progress: bool | None = None) -> None:
        self.workers = None if workers is None else check_int("workers", workers, low=1)
        from ..training._progress import resolve_progress

        self.progress = resolve_progress(progress)
        self._entered = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(workers={self.workers})"

    def __enter__(self) -> Executor:
        self._entered = True
        return self

    def __exit__(self, *exc: Any) -> None:
        self._entered = False
        self.close()

    def close(self) -> None:
        """Release the workers (the next :meth:`map` starts new ones)."""

    # -- the hooks ------------------------------------------------------------------------

    def _prepare(self, fn: Callable, tasks: list, names: list[str]) -> None:
        """Check ``fn`` and the tasks can go where they run, before any task starts."""

    def capacity(self) -> int:
        """How many tasks run at once: ``workers`` when given, else what the executor holds
        (this process: 1; processes: the CPUs; Ray: what the cluster's CPUs, and GPUs when
        the tasks ask for some, hold, which connects to it).  Callers that split work into
        slices make this many."""
        raise NotImplementedError

    def _submit(self, fn: Callable, task: Any) -> Hashable:
        """Start ``fn(task)``; return a handle for :meth:`_wait`."""
        raise NotImplementedError

    def _wait(self, handles: list) -> list[tuple[Hashable, bool, Any]]:
        """Block until at least one of ``handles`` ends; ``(handle, True, result)`` or
        ``(handle, False, exception)`` for each that ended (:class:`WorkerDied` when its
        worker died)."""
        raise NotImplementedError

    def _abort(self, handles: list) -> None:
        """Stop the tasks of ``handles`` (the map was interrupted)."""

    # -- the loop -------------------------------------------------------------------------

    @checked_keywords
    def map(self, fn: Callable[[Any], Any], tasks: Iterable, *,
            names: Sequence[str] | None = None, retries: int = 2,
            summary: str | os.PathLike | None = None, what: str = "tasks") -> list:
        """``[fn(task) for task in tasks]``, run by this executor, retrying failures.

        Parameters
        ----------
        fn : callable
            A top-level function of an importable module (it is sent to the workers by
            reference), called as ``fn(task)``.
        tasks : iterable
            Picklable tasks.
        names : sequence of str, optional
            One per task, for the progress, the summary and the errors; default ``"0"``,
            ``"1"``, ...
        retries : int, default=2
            How many times a task that raised, or whose worker died, runs again.  A trial
            resumes from its run folder, so a retry loses nothing.  A
            :class:`~bundlelab.BundleLabError` (bad input, a folder in use, a diverged run:
            it says what to fix, and would say it again) is not retried.
        summary : path, optional
            A JSON file rewritten atomically at every change: the counts (``total``,
            ``done``, ``running``, ``failed``, ``pending``) and per task its ``state``,
            ``attempts``, ``last_error`` and ``seconds``.
        what : str, default="tasks"
            What the tasks are, plural, for the progress and the messages ("trials").

        Returns
        -------
        list
            The results in task order.

        Raises
        ------
        TasksFailed
            When tasks still fail after their retries, once all the others have finished:
            one line naming them and their last errors (a single task's BundleLabError
            first, as it was raised).
        """
        fn, tasks, names, retries, what = _check_map(fn, tasks, names, retries, what)
        if summary is not None:
            summary = Path(summary)
        try:
            self._prepare(fn, tasks, names)
            board = TaskBoard(names, what=what, summary=summary, progress=self.progress,
                              live=not self.in_process)
        except BaseException:
            if not self._entered:  # a Ray started for this map, say
                self.close()
            raise
        results: list = [None] * len(tasks)
        exceptions: dict[int, BaseException] = {}
        pending = deque(range(len(tasks)))
        in_flight: dict[Hashable, int] = {}
        try:
            capacity = max(1, min(self.capacity(), len(tasks)))
            while pending or in_flight:
                while pending and len(in_flight) < capacity:
                    i = pending.popleft()
                    board.start(i)
                    in_flight[self._submit(fn, tasks[i])] = i
                for handle, ok, value in self._wait(list(in_flight)):
                    i = in_flight.pop(handle)
                    if ok:
                        results[i] = value
                        board.done(i)
                    elif board.attempts[i] <= retries and not isinstance(value, BundleLabError):
                        board.retry(i, error_text(value), retries)
                        pending.appendleft(i)  # its run folder is warm: resume it first
                    else:
                        exceptions[i] = value
                        board.fail(i, error_text(value))
        except BaseException:
            self._abort(list(in_flight))
            board.interrupt()
            if not self._entered:
                self.close()
            raise
        finally:
            board.close()
        if not self._entered:
            self.close()
        if exceptions:
            raise _failure(board, results, summary, exceptions) from exceptions[min(exceptions)]
        return results


def _check_map(fn, tasks, names, retries, what):
    if not callable(fn):
        raise BundleLabError(
            f"The 'fn' parameter must be a function called as fn(task). Got {short_repr(fn)} "
            "instead."
        )
    if isinstance(tasks, (str, bytes)) or not isinstance(tasks, Iterable):
        raise BundleLabError(
            f"The 'tasks' parameter must be a list of tasks. Got {short_repr(tasks)} instead."
        )
    tasks = list(tasks)
    if names is None:
        names = [str(i) for i in range(len(tasks))]
    elif isinstance(names, (str, bytes)) or not isinstance(names, Iterable):
        raise BundleLabError(
            f"The 'names' parameter must be a list of str, one per task. Got {short_repr(names)}"
            " instead."
        )
    else:
        names = list(names)
        bad = next((name for name in names if not isinstance(name, str)), None)
        if bad is not None or len(names) != len(tasks):
            raise BundleLabError(
                f"The 'names' parameter must be a list of str, one per task ({len(tasks)}). Got "
                f"{len(names)} names{'' if bad is None else f', one of them {short_repr(bad)}'} "
                "instead."
            )
    retries = check_int("retries", retries, low=0)
    if not isinstance(what, str) or not what.strip():
        raise BundleLabError(
            f"The 'what' parameter must be a non-empty str. Got {short_repr(what)} instead."
        )
    return fn, tasks, names, retries, what


def _failure(board: TaskBoard, results: list, summary: Path | None,
             exceptions: dict[int, BaseException]) -> TasksFailed:
    failed = board.failed_indices()
    failures = {board.names[i]: board.errors[i] for i in failed}
    first = failed[0]
    attempts = board.attempts[first]
    finished = board.total - len(failed)
    where = f"; see {summary}" if summary is not None else ""
    if len(failed) == 1 and isinstance(exceptions[first], BundleLabError):
        # the user's error, which says what to fix, stays the first thing read
        line = " ".join(str(exceptions[first]).split())
        return TasksFailed(
            f"{line} ({board.what} {board.names[first]!r}; the other {finished} "
            f"finished{where})", failures, results,
        )
    text = (f"{board.names[first]!r} failed after {attempts} attempt"
            f"{'s' if attempts > 1 else ''} ({board.errors[first]})")
    if len(failed) > 1:
        others = ", ".join(repr(board.names[i]) for i in failed[1:4])
        more = f" and {len(failed) - 4} more" if len(failed) > 4 else ""
        text = f"{len(failed)} of {board.total} {board.what} failed: {text}; also {others}{more}"
    else:
        text = f"of {board.total} {board.what}, {text}"
    return TasksFailed(
        f"{text}; the other {finished} finished{where}; fix the cause and rerun (finished work "
        "in run folders is kept)", failures, results,
    )


def check_picklable(fn: Callable, tasks: list, names: list[str], where: str) -> None:
    """Refuse, in one line, a function or task that cannot be sent to another process."""
    try:
        pickle.dumps(fn)
    except Exception:  # noqa: BLE001 - any pickling failure says the same
        raise BundleLabError(
            f"The 'fn' parameter must be a top-level function of an importable module: {where} "
            f"sends it to other processes by name. Got {short_repr(fn)} instead."
        ) from None
    for name, task in zip(names, tasks):
        try:
            pickle.dumps(task)
        except Exception as exc:  # noqa: BLE001
            raise BundleLabError(
                f"task {name!r} cannot be sent to another process ({error_text(exc)}): {where} "
                "needs picklable tasks; pass plain data (paths, numbers, dicts)"
            ) from None


@checked_keywords
def get_executor(executor: str | Executor = "inprocess", *, workers: int | None = None,
                 address: str | None = None, progress: bool | None = None,
                 resources: dict | None = None) -> Executor:
    """The executor named ``executor``, or ``executor`` itself when it is one.

    Parameters
    ----------
    executor : {"inprocess", "processes", "ray"} or Executor, default="inprocess"
        "inprocess": one task after another in this process, exactly as a plain loop;
        "processes": a pool of local processes (spawned); "ray": Ray tasks, on a local
        instance or a cluster.
    workers : int, optional
        Tasks at once: "processes" default ``os.cpu_count()``; "ray" default as many as the
        cluster's CPUs (or GPUs) hold tasks of ``resources``; "inprocess" runs one.
    address : str, optional
        "ray" only: None starts a local instance (or reuses the one this process has
        initialised), "auto" joins the cluster running on this machine (``ray start``),
        else the cluster at that address (``HOST:PORT`` or ``ray://HOST:10001``).
    progress : bool or None, default=None
        Done / running / failed / total on stderr; None: when stderr is a terminal.
    resources : dict, optional
        "ray" only, per task: ``num_cpus`` (default 1), ``num_gpus``, ``memory`` (bytes) and
        custom resources, e.g. ``{"num_cpus": 1, "num_gpus": 1}``.  The local executors
        accept and ignore it (a caller need not know where its tasks run).

    Returns
    -------
    Executor
    """
    if isinstance(executor, Executor):
        given = {"workers": workers, "address": address, "progress": progress,
                 "resources": resources}
        extra = [key for key, value in given.items() if value is not None]
        if extra:
            raise BundleLabError(
                f"get_executor() got an Executor and {', '.join(extra)}: set those when "
                "making the executor"
            )
        return executor
    if not isinstance(executor, str) or executor not in EXECUTORS:
        raise BundleLabError(
            f"The 'executor' parameter must be one of {', '.join(map(repr, EXECUTORS))} or an "
            f"Executor. Got {short_repr(executor)} instead."
        )
    if address is not None and executor != "ray":
        raise BundleLabError(
            f"The 'address' parameter is for the ray executor (a Ray cluster's address), not "
            f"{executor!r}: drop it or use executor='ray'"
        )
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise BundleLabError(
            "The 'address' parameter must be 'auto' or a Ray cluster's address (HOST:PORT). "
            f"Got {short_repr(address)} instead."
        )
    if progress is not None:
        check_bool("progress", progress)
    resources = _check_resources(resources)
    module_name, _, class_name = EXECUTORS[executor].partition(":")
    import importlib

    cls = getattr(importlib.import_module(module_name), class_name)
    if executor == "ray":
        return cls(workers=workers, address=address, progress=progress, resources=resources)
    return cls(workers=workers, progress=progress)


def _check_resources(resources: Any) -> dict[str, float]:
    if resources is None:
        return {}
    expected = ("a dict of resource name to amount >= 0, e.g. {'num_cpus': 1, 'num_gpus': 1}")
    if not isinstance(resources, dict):
        raise BundleLabError(
            f"The 'resources' parameter must be {expected}. Got {short_repr(resources)} instead."
        )
    checked = {}
    for key, value in resources.items():
        if (not isinstance(key, str) or isinstance(value, bool)
                or not isinstance(value, (int, float)) or not value >= 0):
            raise BundleLabError(
                f"The 'resources' parameter must be {expected}. Got {key!r}: "
                f"{short_repr(value)} instead."
            )
        checked[key] = value
    return checked


@contextlib.contextmanager
def executor_in_use(executor: str | Executor | None = None, **options: Any) -> Iterator[Executor]:
    """:func:`get_executor` for a ``with`` block, closed at its end only if made here.

    Library functions that take an ``executor`` argument run their tasks inside this block:
    an executor they made from a name is theirs to close, while an :class:`Executor` the
    caller passed stays open, so that the caller can map more tasks on the same workers (a
    Ray cluster or a warm process pool) and closes it when done.

    Parameters
    ----------
    executor : str, Executor or None, default=None
        None means "inprocess".
    **options
        :func:`get_executor`'s keywords (``workers``, ``address``, ``progress``,
        ``resources``), for an executor made here.

    Yields
    ------
    Executor
    """
    running = get_executor("inprocess" if executor is None else executor, **options)
    if running is executor:  # the caller's: entered (kept warm) and closed by the caller
        yield running
        return
    with running:  # made here: its workers stay up for every map of the block, then go
        yield running
