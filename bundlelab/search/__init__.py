"""Budgeted super networks (Veniat & Denoyer, CVPR 2018) on the spec language.

"Give me the most accurate network that costs at most C": a super-network (a spec whose
``add`` nodes have optional edges, its *gates*) is trained with the *switches* of its gates
(on/off, one per gate) sampled per example; REINFORCE learns which gates to keep so that the
deterministic architecture (the gates with ``sigmoid(gamma) > 0.5`` switched on) is accurate
and its cost stays under the budget.  The result is an ordinary spec to retrain, audit for
conflicting bundles and ship.

Framework-free here: the super-networks (:func:`resnet_fabric`, :func:`conv_fabric`), the
real architecture of each example (:class:`GatedGraph`), the costs (:func:`get_cost`: flops,
params, latency, parallel:N), the extraction, the search loop and the sweep with its Pareto
front.  The gated forward pass and the REINFORCE step run in a backend (``"torch"``).

>>> from bundlelab.search import resnet_fabric, GatedGraph, get_cost
>>> net = resnet_fabric(3, extra=False)          # ResNet-20
>>> graph = GatedGraph(net)
>>> alive, live = graph.real_architecture(graph.all_on()[None])
>>> [int(get_cost(f"parallel:{n}")(graph, alive, live)[0]) for n in (1, 2)]
[22, 20]
"""

from ._allocation import rounds
from ._costs import (
    COSTS,
    Cost,
    FlopsCost,
    LatencyCost,
    ParallelCost,
    ParamsCost,
    cheapest_architecture,
    get_cost,
)
from ._extract import deterministic_switches, extract, fit_to_budget
from ._fabrics import conv_fabric, resnet_fabric
from ._graph import GatedGraph
from ._search import (
    BudgetWarning,
    BudgetedSearch,
    SearchConfig,
    SearchResult,
    architecture_costs,
    search,
    validation_split,
)
from ._sweep import SweepResult, budget_checks, default_lambdas, pareto_front, sweep

__all__ = [
    "COSTS",
    "BudgetWarning",
    "BudgetedSearch",
    "Cost",
    "FlopsCost",
    "GatedGraph",
    "LatencyCost",
    "ParallelCost",
    "ParamsCost",
    "SearchConfig",
    "SearchResult",
    "SweepResult",
    "architecture_costs",
    "budget_checks",
    "cheapest_architecture",
    "conv_fabric",
    "default_lambdas",
    "deterministic_switches",
    "extract",
    "fit_to_budget",
    "get_cost",
    "pareto_front",
    "resnet_fabric",
    "rounds",
    "search",
    "sweep",
    "validation_split",
]
