"""Numba's thread pool: one that sleeps when idle, so it never spins against torch's or
onnxruntime's pools, and never needs a process-wide ``OMP_WAIT_POLICY``.

Numba picks its OpenMP threading layer by default.  Its idle workers spin, and on a small
machine they spin on the very cores torch's own OpenMP pool wants: a training epoch that
measures bundles every epoch slowed down.  The old remedy, ``OMP_WAIT_POLICY=PASSIVE``, is read
by every OpenMP runtime in the process, so it also put torch's workers to sleep after each
operation and made the epoch itself 2-4x slower.  The choice is made per library instead:

* Numba runs bundlelab's kernels on its ``workqueue`` layer, whose workers block on a condition
  variable when idle (no spinning) and which needs no extra package;
* torch and onnxruntime keep their own pools and their default wait policy.

``benchmarks/bench_threads.py`` measures both, alone and beside a busy process.

The workqueue layer aborts the process when two threads launch parallel kernels at once, so
every parallel launch of the CPU backend holds :data:`LAUNCH_LOCK` (the kernels use all cores
anyway; concurrent callers simply take turns).  A user's choice wins: with
``NUMBA_THREADING_LAYER`` set, or ``numba.config.THREADING_LAYER`` set before bundlelab's first
kernel, nothing is changed (the lock stays, at no measurable cost).
"""

from __future__ import annotations

import os
import threading

import numba

#: held around every parallel kernel launch of the CPU backend
LAUNCH_LOCK = threading.Lock()

#: Numba's threading layer for bundlelab's kernels, unless the user chose one
DEFAULT_LAYER = "workqueue"


def choose_threading_layer() -> str:
    """Set Numba's threading layer to :data:`DEFAULT_LAYER` unless the user chose one.

    Returns the layer that Numba will use (what was chosen, or the user's choice).  Numba reads
    the setting when it first launches a parallel kernel; after that it cannot change.
    """
    chosen = os.environ.get("NUMBA_THREADING_LAYER") or numba.config.THREADING_LAYER
    if chosen and chosen != "default":
        return chosen
    numba.config.THREADING_LAYER = DEFAULT_LAYER
    return DEFAULT_LAYER
