"""The executors of one machine: "inprocess" (the default) and "processes".

"processes" runs each worker as its own single-process pool (spawned, never forked: a fork of
a process that holds torch's or Numba's threads can deadlock).  One pool per worker, not one
pool of N workers, because a pool whose worker dies breaks as a whole, failing every task in
it with ``BrokenProcessPool``: with one worker per pool, only the task of the dead worker is
failed (and retried); the other workers go on undisturbed.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from .._errors import BundleLabError
from ._base import Executor, WorkerDied, check_picklable

#: the variables that size the thread pools of torch (OpenMP), MKL and OpenBLAS
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class InProcessExecutor(Executor):
    """One task after another in this process, exactly as a plain loop would run them (the
    tasks' own progress bars included); a failed task is retried at once."""

    name = "inprocess"
    in_process = True

    def __init__(self, *, workers: int | None = None, progress: bool | None = None) -> None:
        super().__init__(workers=workers, progress=progress)
        if self.workers not in (None, 1):
            raise BundleLabError(
                f"The 'workers' parameter must be 1 (or None) for the inprocess executor, which "
                f"runs one task at a time. Got {self.workers} instead; use executor='processes' "
                "or 'ray' to run several at once"
            )
        self._outcomes: dict[int, tuple[bool, Any]] = {}
        self._ids = itertools.count()

    def capacity(self) -> int:
        return 1

    def _submit(self, fn: Callable, task: Any) -> Hashable:
        handle = next(self._ids)
        try:
            self._outcomes[handle] = (True, fn(task))
        except Exception as exc:  # noqa: BLE001 - retried; Ctrl-C and exits propagate
            self._outcomes[handle] = (False, exc)
        return handle

    def _wait(self, handles: list) -> list:
        return [(handle, *self._outcomes.pop(handle)) for handle in handles]


class ProcessExecutor(Executor):
    """Tasks in ``workers`` local processes (spawned), each task in one of them.

    Each worker's torch, MKL and OpenBLAS get ``os.cpu_count() // workers`` threads (at least
    one) unless ``OMP_NUM_THREADS`` (...) is set, as Ray does for its workers: N workers of
    all-core thread pools would fight over the cores.
    """

    name = "processes"

    def __init__(self, *, workers: int | None = None, progress: bool | None = None) -> None:
        super().__init__(workers=workers, progress=progress)
        if self.workers is None:
            self.workers = os.cpu_count() or 1
        self._pools: list[cf.ProcessPoolExecutor | None] = []
        self._slot_of: dict[cf.Future, int] = {}

    def _prepare(self, fn: Callable, tasks: list, names: list[str]) -> None:
        check_picklable(fn, tasks, names, "the processes executor")

    def capacity(self) -> int:
        return self.workers

    def _submit(self, fn: Callable, task: Any) -> Hashable:
        busy = set(self._slot_of.values())
        slot = next((s for s in range(len(self._pools)) if s not in busy), len(self._pools))
        if slot == len(self._pools):
            self._pools.append(None)
        if self._pools[slot] is None:
            threads = max(1, (os.cpu_count() or 1) // self.workers)
            self._pools[slot] = cf.ProcessPoolExecutor(
                1, mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker, initargs=(threads, os.getpid()))
        future = self._pools[slot].submit(fn, task)
        self._slot_of[future] = slot
        return future

    def _wait(self, handles: list) -> list:
        done, _ = cf.wait(handles, return_when=cf.FIRST_COMPLETED)
        outcomes = []
        for future in done:
            slot = self._slot_of.pop(future)
            exc = future.exception()
            if isinstance(exc, BrokenProcessPool):
                # the pool of a dead worker refuses new tasks: start a new one for the slot
                self._pools[slot].shutdown(wait=False)
                self._pools[slot] = None
                exc = WorkerDied("its worker process died (killed, out of memory or crashed)")
            outcomes.append((future, exc is None, future.result() if exc is None else exc))
        return outcomes

    def _abort(self, handles: list) -> None:
        for slot in {self._slot_of.pop(future) for future in handles if future in self._slot_of}:
            pool, self._pools[slot] = self._pools[slot], None
            pool.shutdown(wait=False, cancel_futures=True)
            _terminate(pool)

    def close(self) -> None:
        pools, self._pools = self._pools, []
        self._slot_of.clear()
        for pool in pools:
            if pool is not None:
                pool.shutdown(wait=True)


def _terminate(pool: cf.ProcessPoolExecutor) -> None:
    """Stop a pool's worker now (an interrupted map must not leave a task training on)."""
    if hasattr(pool, "terminate_workers"):  # Python >= 3.14
        pool.terminate_workers()
        return
    # before 3.14 the pool offers no way to stop a running task but its processes
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()


def _start_worker(threads: int, parent: int) -> None:
    """A worker's first step: size the thread pools before a framework starts them, and
    watch the command that started it."""
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    chosen = os.environ.get("OMP_NUM_THREADS")
    for variable in THREAD_VARIABLES:
        os.environ.setdefault(variable, str(threads))
    torch = sys.modules.get("torch")  # imported already by the parent's main module
    if torch is not None and chosen is None:
        torch.set_num_threads(threads)


def _exit_with(parent: int, every: float = 1.0) -> None:
    """End this worker when ``parent`` (the command) is gone, even mid-task.

    A pool's worker notices a dead parent only when it asks for its next task, so a killed
    command would leave its running trials training on, holding their run folders' locks:
    the rerun would find them "in use".  Being adopted by another process says the parent
    died.
    """
    while os.getppid() == parent:
        time.sleep(every)
    os._exit(1)
