"""Model selection: searches over budgets and lambdas, retrained, and their Pareto front.

Each (budget, lambda) pair runs one :class:`BudgetedSearch`; its deterministic architecture is
extracted and retrained from scratch on the search-training split, which gives its validation
accuracy (mean of the last epochs), its test accuracy (after the last epoch) and the bundle
entropy of its measured layers.  The Pareto front is taken on validation accuracy against
cost (the supplementary's protocol) and reported with test accuracies.  The plain family the
super-network was drawn from (ResNets, narrower fabrics) is trained with the same data, split
and epochs for comparison.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._atomic import atomic_write_text
from ..spec import Spec, layer_count, parameter_count
from ..training import Backend, TrainConfig, Training
from ._costs import get_cost
from ._graph import GatedGraph
from ._search import BudgetedSearch, SearchConfig, architecture_costs, validation_split


def default_lambdas(budget: float, count: int = 1) -> list[float]:
    """Lambdas for a budget of order of magnitude ``m``: ``10 ** -m`` (``count=1``), or
    ``count`` values log-spaced from ``10 ** (-m - 1)`` to ``10 ** (-m + 1)``."""
    m = math.floor(math.log10(budget))
    if count == 1:
        return [10.0 ** -m]
    return [10.0 ** (-m - 1 + 2 * k / (count - 1)) for k in range(count)]


def pareto_front(points: list[dict], *, cost: str = "cost",
                 score: str = "validation_accuracy") -> list[bool]:
    """For each point, whether no other point is at most as costly and at least as good, and
    strictly better in one of the two."""
    flags = []
    for p in points:
        dominated = any(
            q[cost] <= p[cost] and q[score] >= p[score] and (q[cost] < p[cost] or q[score] > p[score])
            for q in points if q is not p
        )
        flags.append(not dominated)
    return flags


@dataclass
class SweepResult:
    """Every searched architecture (``points``), the ``family``, and the per-budget checks."""

    points: list
    family: list
    checks: list
    cost: str

    def to_dict(self) -> dict[str, Any]:
        return {"cost": self.cost, "points": self.points, "family": self.family,
                "checks": self.checks}


def _retrain(spec: Spec, data, split, config: TrainConfig, directory, backend, progress) -> dict:
    run = Training(spec, split, backend=backend, config=config, directory=directory,
                   progress=progress)
    result = run.run()
    test = run.trainee.evaluate(data.x_test, data.y_test, batch_size=max(256, config.batch_size))
    return {
        "validation_accuracy": result.test_accuracy, "test_accuracy": test["accuracy"],
        "final_entropy": result.final_entropy, "layers": layer_count(spec),
        "parameters": parameter_count(spec), "checkpoint_mb": result.checkpoint_mb,
        "ms_per_step": result.ms_per_step,
    }


def sweep(supernet: Spec, data: Any, *, budgets: list, cost: str = "flops",
          lambdas: list | None = None, search: dict | None = None,
          config: TrainConfig | None = None, retrain_epochs: int = 20,
          family: list | tuple = (), backend: str | Backend = "torch",
          directory: str | os.PathLike | None = None, progress: bool = False) -> SweepResult:
    """Search every (budget, lambda), retrain each architecture, and compare with ``family``.

    Parameters
    ----------
    supernet : Spec
    data : bundlelab.datasets.Dataset
    budgets : list of float
    cost : str, default="flops"
    lambdas : list of float, optional
        The same lambdas for every budget; default: :func:`default_lambdas` of each budget.
    search : dict, optional
        Other :class:`SearchConfig` fields (warmup_epochs, search_epochs, penalty, ...).
    config : TrainConfig, optional
        Training options of the searches and of the retraining (``epochs`` is replaced by
        ``retrain_epochs`` for the latter).
    retrain_epochs : int, default=20
    family : sequence of Spec
        The plain networks to compare with; all of their gates count as on.
    directory : path, optional
        Sub-folders per search and retraining; everything resumes.

    Returns
    -------
    SweepResult
    """
    config = TrainConfig() if config is None else config
    folder = None if directory is None else Path(directory)
    sub = (lambda name: None) if folder is None else (lambda name: folder / name)
    retrain_config = config.replace(epochs=retrain_epochs)
    options = dict(search or {})
    split = validation_split(data, options.get("validation_fraction", 0.1), config.seed)
    points = []
    for budget in budgets:
        for lam in (lambdas or default_lambdas(budget)):
            name = f"{cost}-{budget:g}-lam{lam:g}".replace(":", "")
            settings = SearchConfig(budget=float(budget), cost=cost, lam=float(lam), **options)
            found = BudgetedSearch(supernet, data, settings, config=config, backend=backend,
                                   directory=sub(name), progress=progress).run()
            trained = _retrain(found.spec, data, split, retrain_config, sub(f"{name}/retrain"),
                               backend, progress)
            points.append({"name": name, "budget": float(budget), "lam": float(lam),
                           "cost": found.cost, "met_budget": found.met_budget,
                           "search_validation_accuracy": found.validation_accuracy,
                           "costs": found.costs, **trained})
    for point, on_front in zip(points, pareto_front(points)):
        point["pareto"] = on_front
    members = []
    measure = get_cost(cost)
    for spec in family:
        graph = GatedGraph(spec)
        alive, live = graph.real_architecture(graph.all_on()[None])
        trained = _retrain(spec, data, split, retrain_config, sub(f"family-{spec.name}"),
                           backend, progress)
        members.append({"name": spec.name, "cost": float(measure(graph, alive, live)[0]),
                        "costs": architecture_costs(spec), **trained})
    checks = budget_checks(points, members, budgets)
    result = SweepResult(points, members, checks, cost)
    if folder is not None:
        _write(folder, result)
    return result


def budget_checks(points: list, family: list, budgets: list) -> list[dict]:
    """Per budget: the searched architecture chosen on validation accuracy among those within
    the budget, whether it meets the budget, and its test accuracy against the best family
    member within the budget (best on test accuracy, the comparison least kind to the search)."""
    checks = []
    for budget in budgets:
        candidates = [p for p in points if p["budget"] == float(budget)]
        # Model selection on validation accuracy among the architectures within the budget
        # (the cheapest one when none is).
        within_budget = [p for p in candidates if p["met_budget"]]
        chosen = (max(within_budget, key=lambda p: p["validation_accuracy"]) if within_budget
                  else min(candidates, key=lambda p: p["cost"]))
        within = [m for m in family if m["cost"] <= budget]
        best = max(within, key=lambda m: m["test_accuracy"]) if within else None
        checks.append({
            "budget": float(budget), "architecture": chosen["name"], "cost": chosen["cost"],
            "met_budget": chosen["met_budget"], "test_accuracy": chosen["test_accuracy"],
            "best_family_member": None if best is None else best["name"],
            "family_test_accuracy": None if best is None else best["test_accuracy"],
            "within_one_point": None if best is None
            else chosen["test_accuracy"] >= best["test_accuracy"] - 0.01,
        })
    return checks


def _write(folder: Path, result: SweepResult) -> None:
    atomic_write_text(folder / "sweep.json", json.dumps(result.to_dict(), indent=2) + "\n")
    columns = ["name", "budget", "lam", "cost", "met_budget", "pareto", "validation_accuracy",
               "test_accuracy", "final_entropy", "layers", "parameters"]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(result.points)
    writer.writerows([{**m, "budget": "", "lam": "", "met_budget": "", "pareto": "family"}
                      for m in result.family])
    atomic_write_text(folder / "sweep.csv", out.getvalue())
    try:
        from ._plots import plot_front

        plot_front(result.points, result.family, cost=result.cost, path=folder / "front.png")
    except ImportError:  # pragma: no cover - matplotlib is optional
        pass
