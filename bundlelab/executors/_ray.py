"""The "ray" executor: each task a Ray task, on a local instance or a cluster.

Ray is imported when the executor is made, never before.  A Ray this process has already
initialised (``ray.init`` in the user's code, with their ``runtime_env``; a test's fixture) is
reused as it is and left running; otherwise ``address=None`` starts a local instance, "auto"
joins the cluster started on this machine with ``ray start``, and any other address joins
that cluster.  Only an instance this executor started is shut down, by :meth:`close`.

Retries are the shared loop's (bundlelab.executors._base), not Ray's: each task is submitted
with ``max_retries=0`` and ``retry_exceptions=False``, so a task that raised and a task whose
worker or node died are both counted, shown and retried alike in every executor, and the
summary file says how many attempts each took.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from .._errors import BundleLabError, MissingDependencyError
from ._base import Executor, WorkerDied
from ._board import error_text

#: the one line shown when Ray is missing
MISSING_RAY = "--executor ray needs Ray: pip install 'bundlelab[ray]'"

#: the per-task resources Ray takes as options of their own; others are custom resources
_OPTIONS = ("num_cpus", "num_gpus", "memory")


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise MissingDependencyError(MISSING_RAY) from exc
    return ray


def run_task(fn: Callable, task: Any) -> Any:
    """What a Ray worker runs: ``fn(task)`` (a module-level function, so Ray pickles it by
    reference and every worker imports it from the installed bundlelab)."""
    return fn(task)


class RayExecutor(Executor):
    """Tasks as Ray tasks (see the module's docstring for which Ray is used).

    Parameters
    ----------
    workers : int, optional
        Tasks in flight at once; default as many as the cluster's CPUs (and GPUs, when the
        tasks ask for some) hold when the map starts.
    address : str, optional
        None: this process's Ray, or a new local one; "auto" or ``HOST:PORT``: that cluster.
    progress : bool or None, default=None
    resources : dict, optional
        Per task: ``num_cpus`` (default 1), ``num_gpus``, ``memory`` (bytes), custom
        resources.
    """

    name = "ray"

    def __init__(self, *, workers: int | None = None, address: str | None = None,
                 progress: bool | None = None, resources: dict | None = None) -> None:
        super().__init__(workers=workers, progress=progress)
        self._ray = _import_ray()
        self.address = address
        self.resources = dict(resources or {})
        self._started = False
        self._task = None
        self._fn: tuple[Callable, Any] | None = None

    def __repr__(self) -> str:
        return f"RayExecutor(workers={self.workers}, address={self.address!r})"

    def _connect(self) -> None:
        ray = self._ray
        if not ray.is_initialized():
            try:
                if self.address is None:
                    ray.init(include_dashboard=False)
                else:
                    ray.init(address=self.address)
            except ConnectionError as exc:
                raise BundleLabError(
                    f"cannot join the Ray cluster at {self.address!r} ({' '.join(str(exc).split())}"
                    "); start one with `ray start --head` or check the address"
                ) from None
            self._started = True
        if self._task is None:
            options = {"max_retries": 0, "retry_exceptions": False,
                       "num_cpus": self.resources.get("num_cpus", 1)}
            options.update({key: self.resources[key] for key in _OPTIONS[1:]
                            if key in self.resources})
            custom = {k: v for k, v in self.resources.items() if k not in _OPTIONS}
            if custom:
                options["resources"] = custom
            self._task = ray.remote(run_task).options(**options)

    def _prepare(self, fn: Callable, tasks: list, names: list[str]) -> None:
        self._connect()
        self._check_feasible()
        if self._fn is None or self._fn[0] is not fn:
            # sent once, not with every task
            self._fn = (fn, self._ray.put(fn))

    def _check_feasible(self) -> None:
        """Refuse tasks no node of the cluster can hold: Ray would queue them for ever."""
        cluster = self._ray.cluster_resources()
        for key, amount in self.resources.items():
            name = {"num_cpus": "CPU", "num_gpus": "GPU"}.get(key, key)
            if amount and cluster.get(name, 0) < amount:
                raise BundleLabError(
                    f"each task asks for {key}={amount:g} but the Ray cluster holds "
                    f"{cluster.get(name, 0):g} {name}: start nodes that have it (ray start "
                    "--num-gpus N, --resources) or ask for less"
                )

    def capacity(self) -> int:
        if self.workers is not None:
            return self.workers
        self._connect()
        cluster = self._ray.cluster_resources()
        held = []
        for key, amount in (("CPU", self.resources.get("num_cpus", 1)),
                            ("GPU", self.resources.get("num_gpus", 0))):
            if amount:
                held.append(int(cluster.get(key, 0) // amount))
        # tasks that ask for nothing: one per CPU
        return max(1, min(held) if held else int(cluster.get("CPU", 1)))

    def _submit(self, fn: Callable, task: Any) -> Hashable:
        return self._task.remote(self._fn[1], task)

    def _wait(self, handles: list) -> list:
        ray = self._ray
        ready, _ = ray.wait(handles, num_returns=1)
        outcomes = []
        for ref in ready:
            try:
                outcomes.append((ref, True, ray.get(ref)))
            except ray.exceptions.RayTaskError as exc:  # the task raised: its own exception
                outcomes.append((ref, False, exc if exc.cause is None else exc.cause))
            except ray.exceptions.RayError as exc:  # its worker or node died
                outcomes.append((ref, False,
                                 WorkerDied(f"its Ray worker died ({error_text(exc)})")))
        return outcomes

    def _abort(self, handles: list) -> None:
        for ref in handles:
            try:
                self._ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - finished meanwhile, or its node is gone
                pass

    def close(self) -> None:
        """Forget the function sent; shut Ray down only if this executor started it."""
        self._fn = None
        self._task = None
        if self._started:
            self._started = False
            if self._ray.is_initialized():
                self._ray.shutdown()
