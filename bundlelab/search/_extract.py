"""From gates to an ordinary network: the real architecture as a plain spec."""

from __future__ import annotations

import numpy as np

from .._errors import BundleLabError
from ..spec import Spec
from ._graph import GatedGraph


def deterministic_gates(probabilities: np.ndarray) -> np.ndarray:
    """The evaluation architecture: gate ``j`` is on iff ``sigmoid(gamma_j) > 0.5``."""
    return np.asarray(probabilities) > 0.5


def extract(spec: Spec, gates_on: np.ndarray, *, name: str | None = None) -> Spec:
    """The real architecture of ``gates_on`` as an ordinary spec, without optional edges.

    Nodes off every input-to-output path of on edges are removed with their edges; node ids,
    stages and measured flags are kept, so the adapters report the extracted network's layers
    under the super-network's names.

    Parameters
    ----------
    spec : Spec
        The super-network.
    gates_on : bool array of shape (n_gates,)
        In the order of :attr:`GatedGraph.gates`.
    name : str, optional
        Default: ``"<spec name>-extracted"``.

    Raises
    ------
    BundleLabError
        If no path of on edges joins the input to the output.
    """
    graph = GatedGraph(spec)
    alive, live = graph.real_architecture(np.asarray(gates_on, dtype=bool))
    if not alive[graph.output]:
        raise BundleLabError(
            f"the gates leave no path from the input to the output of {spec.name!r}: the "
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
