"""The options that choose where a command's tasks run, shared by analyze, audit, search and
train's autotune: ``--executor``, ``--workers``, ``--ray-address`` (and the trials' ``--threads``,
search and autotune).

Declare them in a command as ``executor: ExecutorName = EXECUTOR, workers: Optional[int] =
WORKERS, ray_address: Optional[str] = RAY_ADDRESS`` and turn them into an executor with
:func:`executor_from_options`.  Nothing is imported here that ``--help`` would pay for: the
executors (and Ray) are imported when the command runs.
"""

from __future__ import annotations

from typing import Optional

import typer

from .._errors import BundleLabError
from ._app import choices, flags_in_errors

#: the executors, in the order --help lists them (bundlelab.executors.EXECUTORS)
EXECUTOR_NAMES = ("inprocess", "processes", "ray")
ExecutorName = choices("ExecutorName", EXECUTOR_NAMES)

HELP = {
    "executor": "Where the tasks run: inprocess (one after another in this process), "
    "processes (local worker processes) or ray (a Ray cluster, or a local Ray; needs "
    "bundlelab[ray]). A task that fails or whose worker dies is retried; trials resume from "
    "their run folders (docs/distributed.md).",
    "workers": "Tasks at once (processes, ray). Default: processes, one per CPU; ray, as many "
    "as the cluster's CPUs (or GPUs) hold.",
    "ray_address": "The Ray cluster to join with --executor ray: auto (the one started on "
    "this machine with `ray start`), HOST:PORT or ray://HOST:10001. Default: a local Ray "
    "started for the command.",
    "threads": "torch's intra-op threads in each trial. Default: as many as this process uses, "
    "so trials in worker processes or on Ray (whose workers start with one) give the same "
    "results as in-process; fewer when several trials share a machine's cores.",
}

EXECUTOR = typer.Option(ExecutorName("inprocess"), "--executor", help=HELP["executor"])
WORKERS = typer.Option(None, "--workers", min=1, show_default=False, help=HELP["workers"])
RAY_ADDRESS = typer.Option(None, "--ray-address", metavar="ADDRESS", show_default=False,
                           help=HELP["ray_address"])
#: the trials' threads (search, autotune): set in every trial, wherever it runs
THREADS = typer.Option(None, "--threads", min=1, show_default=False, help=HELP["threads"])

def executor_from_options(executor, workers: Optional[int] = None,
                          ray_address: Optional[str] = None, *,
                          resources: Optional[dict] = None, progress: Optional[bool] = None):
    """The :class:`~bundlelab.executors.Executor` of ``--executor``, ``--workers`` and
    ``--ray-address``.

    Parameters
    ----------
    executor : ExecutorName or str
        The value of ``--executor``.
    workers : int, optional
        The value of ``--workers``.
    ray_address : str, optional
        The value of ``--ray-address``; refused with another executor than ray.
    resources : dict, optional
        What each task needs on Ray (``{"num_gpus": 1}`` for an audit's slices on GPUs).
    progress : bool or None, default=None
        Done / running / failed / total on stderr; None: when stderr is a terminal.

    Returns
    -------
    bundlelab.executors.Executor
    """
    from ..executors import get_executor

    name = getattr(executor, "value", executor)
    if ray_address is not None and name != "ray":
        raise BundleLabError(
            f"--ray-address joins a Ray cluster, which needs --executor ray (got --executor "
            f"{name}); add --executor ray or drop --ray-address"
        )
    with flags_in_errors():  # get_executor's errors name the options, not its keywords
        return get_executor(name, workers=workers, address=ray_address, progress=progress,
                            resources=resources)
