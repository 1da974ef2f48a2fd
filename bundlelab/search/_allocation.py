"""The distributed computation cost: synchronous rounds on ``n`` parallel machines.

The allocation is greedy, in a fixed, deterministic order: the nodes of the real architecture
in spec order (a topological order).  Each round scans the nodes not yet run, in that order,
and stops once the round has used ``n`` machines; it takes a node when none of its
predecessors (its sources over live edges) is still waiting, where nodes taken earlier in the
same round still count as waiting (a round is one synchronous step).  A computing node uses
one machine; the input and reshapes use none, and an identity shortcut is an edge, not a
node.  A round that runs only free nodes is not counted.

This reproduces the paper's figures: ResNet-110 needs 112 rounds on one machine and 110 on two
or four; ResNet-20 22 and 20; the convolutional fabric with 8, 4, 2, 1 columns 171, 83, 39, 12
on one machine.  On several machines the fabric's count depends on the order (the paper does
not give its own), and this order is the one documented above.
"""

from __future__ import annotations

import numpy as np

from ._graph import GatedGraph


def rounds(graph: GatedGraph, alive: np.ndarray, live: np.ndarray, machines: int) -> int:
    """Rounds to run one real architecture on ``machines`` machines.

    Parameters
    ----------
    graph : GatedGraph
    alive : bool array of shape (n_nodes,)
    live : bool array of shape (n_edges,)
    machines : int

    Returns
    -------
    int
        0 for an empty (inconsistent) architecture.
    """
    waiting = [int(v) for v in np.flatnonzero(alive)]
    predecessors = {v: [] for v in waiting}
    for e in np.flatnonzero(live):
        predecessors[int(graph.targets[e])].append(int(graph.sources[e]))
    weight = graph.compute_weight
    count = 0
    pending = set(waiting)
    while waiting:
        used, taken = 0, []
        for v in waiting:
            if used >= machines:
                break
            if not any(u in pending for u in predecessors[v]):
                taken.append(v)
                used += int(weight[v])
        if not taken:  # cannot happen in a DAG; guard against an endless loop
            raise RuntimeError("allocation made no progress")
        pending.difference_update(taken)
        taken_set = set(taken)
        waiting = [v for v in waiting if v not in taken_set]
        if used > 0:
            count += 1
    return count
