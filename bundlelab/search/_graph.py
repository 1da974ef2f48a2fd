"""A spec seen as a gated graph: its gates, and each example's real architecture.

Nodes are indexed by their position in ``spec.nodes`` (a topological order) and edges by
their position in the list of ``(source, target)`` pairs in node order.  The gates are the
optional edges, in the same order (:attr:`GatedGraph.gates`); the *switches* of an
architecture are its on/off values, one per gate.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np

from .._errors import BundleLabError
from .._validation import check_instance, checked_keywords
from ..spec import OPS, Spec

#: ops that compute nothing: they take no capacity of a machine in the distributed cost
FREE_OPS = frozenset({"input", "flatten"})


class GatedGraph:
    """Index of a spec's nodes, edges and gates, for vectorised architecture computations.

    Parameters
    ----------
    spec : Spec
        Any spec; its optional edges are the gates.

    Attributes
    ----------
    spec : Spec
    node_ids : list of str
    sources, targets : ndarray of int, shape (n_edges,)
    edge_gate : ndarray of int, shape (n_edges,)
        Index of the gate of each edge, -1 for an edge that is always on.
    gates : list of (str, str)
        The optional edges (source id, target id), in edge order.
    """

    @checked_keywords
    def __init__(self, spec: Spec) -> None:
        self.spec = check_instance("spec", spec, Spec, "a bundlelab.spec.Spec")
        self.node_ids = [node.id for node in spec.nodes]
        self.index = {node_id: i for i, node_id in enumerate(self.node_ids)}
        sources, targets, gate_of, gates = [], [], [], []
        for node in spec.nodes:
            for source in node.inputs:
                sources.append(self.index[source])
                targets.append(self.index[node.id])
                if source in node.optional:
                    gate_of.append(len(gates))
                    gates.append((source, node.id))
                else:
                    gate_of.append(-1)
        self.sources = np.array(sources, dtype=np.intp)
        self.targets = np.array(targets, dtype=np.intp)
        self.edge_gate = np.array(gate_of, dtype=np.intp)
        self.gates = gates
        self.input = next(i for i, node in enumerate(spec.nodes) if node.op == "input")
        self.output = self.index[spec.output]
        # in-edges and out-edges of every node, for the reachability sweeps
        self.in_edges = [np.flatnonzero(self.targets == v) for v in range(self.n_nodes)]
        self.out_edges = [np.flatnonzero(self.sources == v) for v in range(self.n_nodes)]

    @property
    def n_nodes(self) -> int:
        return len(self.node_ids)

    @property
    def n_edges(self) -> int:
        return len(self.sources)

    @property
    def n_gates(self) -> int:
        return len(self.gates)

    @cached_property
    def compute_weight(self) -> np.ndarray:
        """1 for every node that computes, 0 for the input and reshapes (distributed cost)."""
        return np.array([0 if n.op in FREE_OPS else 1 for n in self.spec.nodes], dtype=np.int64)

    @cached_property
    def node_macs(self) -> np.ndarray:
        """Multiply-accumulates per sample of each node with all of its inputs."""
        return np.array([self._macs(node) for node in self.spec.nodes], dtype=np.float64)

    @cached_property
    def edge_macs(self) -> np.ndarray:
        """What each live input edge adds: an ``add`` node's sum costs one MAC per element per
        input beyond the first, so its cost is split as ``-numel`` on the node plus ``numel``
        per live input edge; other edges add nothing."""
        out = np.zeros(self.n_edges)
        for e, v in enumerate(self.targets):
            if self.spec.nodes[v].op == "add":
                out[e] = np.prod(self.spec.shape_of(self.node_ids[v]))
        return out

    @cached_property
    def node_parameters(self) -> np.ndarray:
        """Trainable parameters of each node."""
        spec = self.spec
        return np.array([
            0 if node.op == "input" else OPS[node.op].weights(
                dict(node.params), [spec.shape_of(s) for s in node.inputs])
            for node in spec.nodes
        ], dtype=np.float64)

    def _macs(self, node) -> float:
        if node.op == "input":
            return 0.0
        shapes = [self.spec.shape_of(s) for s in node.inputs]
        macs = OPS[node.op].macs(dict(node.params), shapes, self.spec.shape_of(node.id))
        if node.op == "add":  # the per-edge split of edge_macs
            macs -= len(node.inputs) * float(np.prod(self.spec.shape_of(node.id)))
        return float(macs)

    # -- architectures --------------------------------------------------------------------

    def edges_on(self, switches: np.ndarray) -> np.ndarray:
        """Which edges are on, shape (batch, n_edges), from the switches (batch, n_gates)."""
        switches = np.asarray(switches, dtype=bool)
        batch = switches.shape[0]
        on = np.ones((batch, self.n_edges), dtype=bool)
        gated = self.edge_gate >= 0
        on[:, gated] = switches[:, self.edge_gate[gated]]
        return on

    def real_architecture(self, switches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each example's real architecture: the nodes and edges on an input-to-output path
        whose edges are all on.

        Two sweeps over the edges in node order (forward reachability from the input, backward
        reachability to the output), each a vectorised operation over the batch: O(edges)
        per batch.

        Parameters
        ----------
        switches : bool array of shape (batch, n_gates) or (n_gates,)
            Each architecture's on/off value of every gate.

        Returns
        -------
        alive : bool array of shape (batch, n_nodes)
            A row of all False is an inconsistent architecture (no path to the output).
        live : bool array of shape (batch, n_edges)
            Edges that are on and join two alive nodes.
        """
        switches = np.asarray(switches, dtype=bool)
        single = switches.ndim == 1
        switches = switches.reshape(1, -1) if single else switches
        if switches.ndim != 2 or switches.shape[1] != self.n_gates:
            raise BundleLabError(
                f"expected {self.n_gates} switches (one per gate) per architecture, got shape "
                f"{switches.shape}"
            )
        on = self.edges_on(switches)
        batch = on.shape[0]
        forward = np.zeros((batch, self.n_nodes), dtype=bool)
        forward[:, self.input] = True
        for v in range(self.n_nodes):
            for e in self.in_edges[v]:
                forward[:, v] |= forward[:, self.sources[e]] & on[:, e]
        backward = np.zeros((batch, self.n_nodes), dtype=bool)
        backward[:, self.output] = True
        for u in range(self.n_nodes - 1, -1, -1):
            for e in self.out_edges[u]:
                backward[:, u] |= backward[:, self.targets[e]] & on[:, e]
        alive = forward & backward
        live = alive[:, self.sources] & alive[:, self.targets] & on
        if single:
            return alive[0], live[0]
        return alive, live

    def all_on(self) -> np.ndarray:
        """The switches that turn every gate on, shape (n_gates,)."""
        return np.ones(self.n_gates, dtype=bool)
