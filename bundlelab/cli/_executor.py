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

from .._errors import BundleLabError, require
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
    "threads": "torch's intra-op threads in each trial, wherever it runs. Default: 1 when "
    "the trials compute on the CPU, torch's own count on a GPU. One thread because a CPU "
    "thread pool whose threads wait for each other stalls when other processes keep the "
    "cores busy (an epoch of a small net 24x slower on 2 threads of a loaded 2-core "
    "machine), because the small nets a CPU trains gain little from more, and because the "
    "results then do not depend on the machine's core count. Raise it for a large net on "
    "an idle many-core machine.",
}

EXECUTOR = typer.Option(ExecutorName("inprocess"), "--executor", help=HELP["executor"])
WORKERS = typer.Option(None, "--workers", min=1, show_default=False, help=HELP["workers"])
RAY_ADDRESS = typer.Option(None, "--ray-address", metavar="ADDRESS", show_default=False,
                           help=HELP["ray_address"])
#: the trials' threads (search, autotune): set in every trial, wherever it runs
THREADS = typer.Option(None, "--threads", min=1, show_default=False, help=HELP["threads"])


def cli_threads(threads: Optional[int], device: str, backend: str = "torch") -> Optional[int]:
    """``--threads``, or its default: 1 for a torch run on the CPU (see ``HELP["threads"]``).

    Parameters
    ----------
    threads : int, optional
        The value of ``--threads``.
    device : str
        The value of ``--device``: ``"cpu"``, ``"auto"`` (the GPU when there is one),
        ``"cuda"`` or ``"cuda:N"``.
    backend : str, default="torch"
        Other backends keep their threads (None).

    Returns
    -------
    int or None
        None: torch's own count (a GPU run, or another backend).
    """
    if threads is not None or backend != "torch":
        return threads
    if device == "cpu":
        return 1
    if device == "auto":  # the torch backend imports torch anyway
        torch = require("torch", purpose="the torch backend", extra="torch")
        return None if torch.cuda.is_available() else 1
    return None

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
