"""From switches to an ordinary network: the real architecture as a plain spec."""

from __future__ import annotations

import numpy as np

from .._errors import BundleLabError
from .._validation import check_instance, checked_keywords
from ..spec import Spec
from ._graph import GatedGraph


@checked_keywords
def deterministic_switches(probabilities: np.ndarray) -> np.ndarray:
    """The switches of the evaluation architecture: gate ``j`` is on iff
    ``sigmoid(gamma_j) > 0.5``.

    Parameters
    ----------
    probabilities : array of shape (n_gates,)
        The gate probabilities ``sigmoid(gamma)``.

    Returns
    -------
    bool ndarray of shape (n_gates,)
    """
    return np.asarray(probabilities) > 0.5


@checked_keywords
def extract(spec: Spec, switches: np.ndarray, *, name: str | None = None) -> Spec:
    """The real architecture of ``switches`` as an ordinary spec, without optional edges.

    Nodes off every input-to-output path of on edges are removed with their edges; node ids,
    stages and measured flags are kept, so the adapters report the extracted network's layers
    under the super-network's names.

    Parameters
    ----------
    spec : Spec
        The super-network.
    switches : bool array of shape (n_gates,)
        The on/off value of each gate, in the order of :attr:`GatedGraph.gates`.
    name : str, optional
        Default: ``"<spec name>-extracted"``.

    Raises
    ------
    BundleLabError
        If no path of on edges joins the input to the output.
    """
    check_instance("spec", spec, Spec, "a bundlelab.spec.Spec")
    if name is not None:
        check_instance("name", name, str, "a str")
    graph = GatedGraph(spec)
    switches = np.asarray(switches, dtype=bool)
    if switches.shape != (graph.n_gates,):
        raise BundleLabError(
            f"expected {graph.n_gates} switches (one per gate of {spec.name!r}), got shape "
            f"{switches.shape}"
        )
    alive, live = graph.real_architecture(switches)
    if not alive[graph.output]:
        raise BundleLabError(
            f"the switches leave no path from the input to the output of {spec.name!r}: the "
            "architecture is empty"
        )
    kept_inputs: dict[int, list[str]] = {v: [] for v in np.flatnonzero(alive)}
    for e in np.flatnonzero(live):
        kept_inputs[int(graph.targets[e])].append(graph.node_ids[graph.sources[e]])
    nodes = [
        node.replace(inputs=tuple(kept_inputs[i]), optional=())
        for i, node in enumerate(spec.nodes) if alive[i]
    ]
    return spec.replace(nodes=tuple(nodes), name=name or f"{spec.name}-extracted")


@checked_keywords
def fit_to_budget(graph: GatedGraph, probabilities: np.ndarray, cost, budget: float, *,
                  switches: np.ndarray | None = None) -> tuple[np.ndarray, float, list[int]]:
    """The search's final budget step (a departure from Veniat & Denoyer, on by default).

    Starting from ``switches`` (default: the deterministic architecture, p > 0.5), while the
    architecture costs more than ``budget``, turn off the gate of lowest probability whose
    removal keeps a path from the input to the output; stop when it fits or when every gate
    left on is needed for such a path.

    Parameters
    ----------
    graph : GatedGraph
    probabilities : array of shape (n_gates,)
    cost : Cost
        A cost of :func:`get_cost` (its ``__call__`` takes ``(graph, alive, live)``).
    budget : float
    switches : bool array of shape (n_gates,), optional

    Returns
    -------
    (switches, cost, dropped)
        The final switches, their cost (which may still exceed ``budget`` when nothing more
        can be dropped) and the indices of the gates turned off, in the order they were.
    """
    check_instance("graph", graph, GatedGraph, "a GatedGraph")
    probabilities = np.asarray(probabilities, dtype=float)
    switches = (deterministic_switches(probabilities) if switches is None
                else np.asarray(switches, dtype=bool)).copy()

    def cost_of(s: np.ndarray) -> float:
        alive, live = graph.real_architecture(s[None])
        return float(cost(graph, alive, live)[0]) if alive[0, graph.output] else float("inf")

    current = cost_of(switches)
    dropped: list[int] = []
    while current > budget:
        # every gate still on, lowest probability first (ties: first gate), each tried off
        # in one batched pass; the first whose removal leaves a path goes
        candidates = sorted(np.flatnonzero(switches), key=lambda g: (probabilities[g], g))
        if not candidates:
            break
        trials = np.repeat(switches[None], len(candidates), axis=0)
        trials[np.arange(len(candidates)), candidates] = False
        alive, _ = graph.real_architecture(trials)
        keeps_path = np.flatnonzero(alive[:, graph.output])
        if not keeps_path.size:
            break  # every gate left on carries the only path: nothing more can go
        gate = int(candidates[keeps_path[0]])
        switches[gate] = False
        current = cost_of(switches)
        dropped.append(gate)
    return switches, current, dropped
