"""Costs of real architectures: each a small object, any usable as the budget, all reported.

A cost maps a batch of real architectures (the ``alive`` nodes and ``live`` edges of
:meth:`GatedGraph.real_architecture`) to one number per architecture.  The additive ones are
sums over the architecture's nodes and edges, computed analytically from the spec:

* ``flops``: multiply-accumulates of one sample (convolutions at their output resolution, so
  strided and upsampled convolutions are counted correctly; an ``add`` costs one per element
  per live input beyond the first; dense layers ``in x out``; batch norm and ReLU free);
* ``params``: trainable parameters of the nodes that run (the paper's memory cost);
* ``latency``: seconds of one forward pass of a batch, summed over the nodes that run, each
  node timed alone on the target device (a measured, hence stochastic, cost; see
  :class:`LatencyCost`);
* ``parallel:N``: synchronous rounds on ``N`` machines (:mod:`._allocation`); not additive,
  computed once per distinct architecture.
"""

from __future__ import annotations

import re
from typing import Callable

import numpy as np

from .._errors import BundleLabError
from .._validation import check_positive_int, checked_keywords
from ._allocation import rounds
from ._graph import GatedGraph


class Cost:
    """A cost of real architectures.  Subclasses set ``name`` and ``unit`` and implement
    :meth:`__call__`; additive costs implement :meth:`node_edge_costs` instead."""

    name = "cost"
    unit = ""
    additive = True

    @checked_keywords
    def __init__(self) -> None:
        """A cost without options."""

    def node_edge_costs(self, graph: GatedGraph) -> tuple[np.ndarray, np.ndarray]:
        """Per-node and per-edge costs whose sum over an architecture is its cost."""
        raise NotImplementedError

    def __call__(self, graph: GatedGraph, alive: np.ndarray, live: np.ndarray) -> np.ndarray:
        """Cost of each architecture: ``alive`` (batch, n_nodes), ``live`` (batch, n_edges)."""
        nodes, edges = self.node_edge_costs(graph)
        return alive.astype(np.float64) @ nodes + live.astype(np.float64) @ edges

    def __repr__(self) -> str:
        return self.name


class FlopsCost(Cost):
    """Multiply-accumulates of one sample through the real architecture."""

    name, unit = "flops", "MACs"

    def node_edge_costs(self, graph):
        return graph.node_macs, graph.edge_macs


class ParamsCost(Cost):
    """Trainable parameters of the real architecture (the paper's memory cost)."""

    name, unit = "params", "parameters"

    def node_edge_costs(self, graph):
        return graph.node_parameters, np.zeros(graph.n_edges)


class LatencyCost(Cost):
    """Forward time of a batch, the sum of each running node's time on the target device.

    ``node_seconds`` is what a backend measured (``trainee.node_seconds(batch_size)``: each
    node alone, inference mode, median of several runs, synchronised on GPUs).  Timings vary
    from run to run, which REINFORCE tolerates (the supplementary's stochastic costs); the
    search re-measures them at the start of every epoch.

    Parameters
    ----------
    node_seconds : array of shape (n_nodes,), optional
        Seconds of each node; None until the search has timed them.
    """

    name, unit = "latency", "s"

    @checked_keywords
    def __init__(self, *, node_seconds: np.ndarray | None = None) -> None:
        self.node_seconds = node_seconds

    def node_edge_costs(self, graph):
        if self.node_seconds is None:
            raise BundleLabError(
                "the latency cost has no timings yet: the search measures them on the device"
            )
        return np.asarray(self.node_seconds, dtype=np.float64), np.zeros(graph.n_edges)


class ParallelCost(Cost):
    """Synchronous rounds on ``machines`` parallel machines (the distributed cost).

    Parameters
    ----------
    machines : int
        At least 1 (:func:`bundlelab.search.rounds`).
    """

    unit = "rounds"
    additive = False

    @checked_keywords
    def __init__(self, machines: int) -> None:
        self.machines = check_positive_int("machines", machines)
        self.name = f"parallel:{self.machines}"
        self._cache: dict[bytes, int] = {}

    def __call__(self, graph, alive, live):
        alive = np.atleast_2d(alive)
        live = np.atleast_2d(live)
        out = np.empty(alive.shape[0])
        # Architectures repeat within a batch: compute each distinct one once.
        for row in range(alive.shape[0]):
            key = np.packbits(alive[row]).tobytes() + np.packbits(live[row]).tobytes()
            if key not in self._cache:
                self._cache[key] = rounds(graph, alive[row], live[row], self.machines)
            out[row] = self._cache[key]
        return out


#: cost names -> factories; ``parallel:N`` is parsed
COSTS: dict[str, Callable[[], Cost]] = {
    "flops": FlopsCost,
    "params": ParamsCost,
    "latency": LatencyCost,
}


@checked_keywords
def get_cost(cost: str | Cost) -> Cost:
    """The cost named ``cost``: "flops", "params", "latency" or "parallel:N".

    Parameters
    ----------
    cost : str or Cost
        A name, or a cost object (returned as it is).

    Returns
    -------
    Cost
    """
    if isinstance(cost, Cost):
        return cost
    if isinstance(cost, str):
        if cost in COSTS:
            return COSTS[cost]()
        match = re.fullmatch(r"parallel:(\d+)", cost)
        if match:
            return ParallelCost(int(match[1]))
    raise BundleLabError(
        f"unknown cost {cost!r}; use flops, params, latency or parallel:N (N machines)"
    )


@checked_keywords
def cheapest_architecture(graph: GatedGraph, cost: Cost) -> tuple[np.ndarray, float]:
    """The switches of the cheapest single input-to-output path, and that architecture's cost.

    Dynamic programming over the DAG on the cost's node weights (a computing node weighs 1 for
    the distributed cost): the cheapest path, with only its own gates on.  For additive costs
    on graphs whose path nodes have no always-on side inputs (both fabrics) it is the cheapest
    architecture there is; it bounds the budgets a search can meet.

    Parameters
    ----------
    graph : GatedGraph
    cost : Cost

    Returns
    -------
    switches : bool ndarray of shape (n_gates,)
        Only the gates of the path on.
    cost : float
    """
    if cost.additive:
        node_cost, edge_cost = cost.node_edge_costs(graph)
    else:
        node_cost, edge_cost = graph.compute_weight.astype(np.float64), np.zeros(graph.n_edges)
    best = np.full(graph.n_nodes, np.inf)
    via = np.full(graph.n_nodes, -1, dtype=np.intp)
    best[graph.input] = node_cost[graph.input]
    for v in range(graph.n_nodes):
        for e in graph.in_edges[v]:
            candidate = best[graph.sources[e]] + edge_cost[e] + node_cost[v]
            if candidate < best[v]:
                best[v], via[v] = candidate, e
    if not np.isfinite(best[graph.output]):
        raise BundleLabError(f"spec {graph.spec.name!r} has no path from its input to its output")
    switches = np.zeros(graph.n_gates, dtype=bool)
    v = graph.output
    while v != graph.input:
        e = via[v]
        if graph.edge_gate[e] >= 0:
            switches[graph.edge_gate[e]] = True
        v = graph.sources[e]
    alive, live = graph.real_architecture(switches[None])
    return switches, float(cost(graph, alive, live)[0])
