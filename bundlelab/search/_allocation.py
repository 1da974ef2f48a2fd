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

import heapq

import numpy as np

from .._validation import check_positive_int, checked_keywords
from ._graph import GatedGraph


@checked_keywords
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

    Notes
    -----
    A round's scan only ever takes nodes whose predecessors all ran in earlier rounds, and
    skipping the others changes nothing, so the scan runs over a heap of those ready nodes in
    spec order; a round's nodes release their successors when it ends.  O((nodes + edges) log
    nodes) per architecture.
    """
    machines = check_positive_int("machines", machines)
    waiting = np.flatnonzero(alive)
    if not len(waiting):
        return 0
    blocking = {int(v): 0 for v in waiting}
    successors: dict[int, list[int]] = {int(v): [] for v in waiting}
    for e in np.flatnonzero(live):
        u, v = int(graph.sources[e]), int(graph.targets[e])
        blocking[v] += 1
        successors[u].append(v)
    weight = graph.compute_weight
    ready = [v for v, count in blocking.items() if count == 0]
    heapq.heapify(ready)
    count = 0
    while ready:
        used, taken = 0, []
        while ready and used < machines:
            v = heapq.heappop(ready)
            taken.append(v)
            used += int(weight[v])
        for u in taken:  # taken nodes count as waiting until the round ends
            for v in successors[u]:
                blocking[v] -= 1
                if blocking[v] == 0:
                    heapq.heappush(ready, v)
        if used > 0:
            count += 1
    return count
