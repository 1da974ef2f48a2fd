"""Where many tasks run: in this process, in local processes, or on a Ray cluster.

>>> from bundlelab.executors import get_executor
>>> with get_executor("inprocess", progress=False) as executor:
...     executor.map(abs, [-1, 2, -3], names=["a", "b", "c"])
[1, 2, 3]

Sweeps, audits and sharded analyses run their tasks through :func:`get_executor`; the
default, "inprocess", is a plain loop in this process.  docs/distributed.md says how to start a
Ray cluster and where run folders must live.
"""

from ._base import EXECUTORS, Executor, TasksFailed, executor_in_use, get_executor
from ._threads import torch_threads

__all__ = ["EXECUTORS", "Executor", "TasksFailed", "executor_in_use", "get_executor",
           "torch_threads"]
