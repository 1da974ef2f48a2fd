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

import contextlib
import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._atomic import atomic_write_text
from .._errors import BundleLabError
from .._validation import (
    check_instance,
    check_positive_float,
    check_positive_int,
    checked_keywords,
    short_repr,
)
from ..spec import Spec, layer_count, parameter_count
from ..training import Backend, FolderLock, TrainConfig, Training
from ..training._folder import clean_leftovers, draw_optional
from ._costs import get_cost
from ._graph import GatedGraph
from ._search import (
    BudgetedSearch,
    SearchConfig,
    architecture_costs,
    budget_magnitude,
    check_budget,
    validation_split,
)
from ..training._progress import resolve_progress


@checked_keywords
def default_lambdas(budget: float, *, count: int = 1) -> list[float]:
    """Lambdas for a budget of order of magnitude ``m``: ``10 ** -m`` (``count=1``), or
    ``count`` values log-spaced from ``10 ** (-m - 1)`` to ``10 ** (-m + 1)``.

    Parameters
    ----------
    budget : float
    count : int, default=1

    Returns
    -------
    list of float
    """
    budget = check_budget("budget", budget)
    count = check_positive_int("count", count)
    m = budget_magnitude(budget)
    if count == 1:
        return [10.0 ** -m]
    return [10.0 ** (-m - 1 + 2 * k / (count - 1)) for k in range(count)]


@checked_keywords
def pareto_front(points: list[dict], *, cost: str = "cost",
                 score: str = "validation_accuracy") -> list[bool]:
    """For each point, whether no other point is at most as costly and at least as good, and
    strictly better in one of the two.

    Parameters
    ----------
    points : list of dict
    cost : str, default="cost"
        The key of each point's cost (lower is better).
    score : str, default="validation_accuracy"
        The key of each point's score (higher is better).

    Returns
    -------
    list of bool
    """
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
    """Every searched architecture, the plain family, and the per-budget checks.

    Attributes
    ----------
    points : list of dict
        One per (budget, lambda): the search's outcome and its retraining.
    family : list of dict
        One per plain network compared with.
    checks : list of dict
        One per budget (:func:`budget_checks`).
    cost : str
        The cost the budgets bound.
    """

    points: list
    family: list
    checks: list
    cost: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (what ``sweep.json`` holds)."""
        return {"cost": self.cost, "points": self.points, "family": self.family,
                "checks": self.checks}


SweepResult.__init__ = checked_keywords(SweepResult.__init__)  # type: ignore[method-assign]


def _retrain(spec: Spec, data, split, config: TrainConfig, directory, backend, progress) -> dict:
    with Training(spec, split, backend=backend, config=config, directory=directory,
                  progress=progress) as run:
        result = run.run()
        test = run.trainee.evaluate(data.x_test, data.y_test,
                                    inference_batch_size=max(256, config.batch_size))
    return {
        "validation_accuracy": result.test_accuracy, "test_accuracy": test["accuracy"],
        "final_entropy": result.final_entropy, "layers": layer_count(spec),
        "parameters": parameter_count(spec), "checkpoint_mb": result.checkpoint_mb,
        "ms_per_step": result.ms_per_step,
    }


@checked_keywords
def sweep(supernet: Spec, data: Any, *, budgets: list, cost: str = "flops",
          lambdas: list | None = None, search: dict | None = None,
          config: TrainConfig | None = None, retrain_epochs: int = 20,
          family: list | tuple = (), backend: str | Backend = "torch",
          directory: str | os.PathLike | None = None, progress: bool | None = None) -> SweepResult:
    """Search every (budget, lambda), retrain each architecture, and compare with ``family``.

    Parameters
    ----------
    supernet : Spec
    data : bundlelab.datasets.Dataset
    budgets : list of float
    cost : str, default="flops"
    lambdas : list of float, optional
        The same lambdas for every budget; None or empty: :func:`default_lambdas` of each
        budget.
    search : dict, optional
        Other :class:`SearchConfig` fields (warmup_epochs, search_epochs, penalty, ...).
    config : TrainConfig, optional
        Training options of the searches and of the retraining (``epochs`` is replaced by
        ``retrain_epochs`` for the latter).
    retrain_epochs : int, default=20
    family : sequence of Spec
        The plain networks to compare with; all of their gates count as on.
    backend : str or Backend, default="torch"
        A :class:`bundlelab.training.SuperNetBackend`.
    directory : path, optional
        Sub-folders per search and retraining; everything resumes.  The folder (and each
        sub-folder while it is worked in) is locked.
    progress : bool or None, default=None
        Progress bars and a line per epoch on stderr; None: when stderr is a terminal.

    Returns
    -------
    SweepResult
    """
    check_instance("supernet", supernet, Spec, "a bundlelab.spec.Spec")
    config = TrainConfig() if config is None else config
    check_instance("config", config, TrainConfig, "a TrainConfig")
    budgets = _positive_floats("budgets", budgets, check=check_budget)
    if lambdas is not None and not (isinstance(lambdas, (list, tuple)) and not lambdas):
        lambdas = _positive_floats("lambdas", lambdas)
    else:
        lambdas = None
    retrain_epochs = check_positive_int("retrain_epochs", retrain_epochs)
    progress = resolve_progress(progress)
    options = dict(search or {})
    for reserved in ("budget", "cost", "lam"):
        if reserved in options:
            raise BundleLabError(
                f"The 'search' parameter holds {reserved!r}, which sweep() sets itself: pass "
                "budgets=, cost= and lambdas= instead"
            )
    # every search option checked before any training
    SearchConfig(budget=budgets[0], cost=cost, **options)
    with FolderLock(directory) if directory is not None else contextlib.nullcontext():
        if directory is not None:
            clean_leftovers(directory)
        return _sweep(supernet, data, budgets=budgets, cost=cost, lambdas=lambdas,
                      options=options, config=config, retrain_epochs=retrain_epochs,
                      family=family, backend=backend,
                      folder=None if directory is None else Path(directory), progress=progress)


def _positive_floats(name: str, values: Any, *, check=check_positive_float) -> list[float]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise BundleLabError(
            f"The {name!r} parameter must be a list of floats > 0. Got {short_repr(values)} "
            "instead."
        )
    checked = [check(name, value) for value in values]
    if not checked:
        raise BundleLabError(f"The {name!r} parameter must hold at least one value.")
    return checked


def _sweep(supernet, data, *, budgets, cost, lambdas, options, config, retrain_epochs, family,
           backend, folder, progress) -> SweepResult:
    sub = (lambda name: None) if folder is None else (lambda name: folder / name)
    retrain_config = config.replace(epochs=retrain_epochs)
    split = validation_split(data, fraction=options.get("validation_fraction", 0.1),
                             seed=config.seed)
    points = []
    for budget in budgets:
        for lam in (lambdas or default_lambdas(budget)):
            name = f"{cost}-{budget:g}-lam{lam:g}".replace(":", "")
            settings = SearchConfig(budget=budget, cost=cost, lam=lam, **options)
            with BudgetedSearch(supernet, data, settings, config=config, backend=backend,
                                directory=sub(name), progress=progress) as run:
                found = run.run()
            trained = _retrain(found.spec, data, split, retrain_config, sub(f"{name}/retrain"),
                               backend, progress)
            points.append({"name": name, "budget": budget, "lam": lam,
                           "cost": found.cost, "met_budget": found.met_budget,
                           "dropped_gates": len(found.dropped_gates),
                           "budget_note": found.budget_note,
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


@checked_keywords
def budget_checks(points: list, family: list, budgets: list) -> list[dict]:
    """Per budget: the searched architecture chosen on validation accuracy among those within
    the budget, whether it meets the budget, and its test accuracy against the best family
    member within the budget (best on test accuracy, the comparison least kind to the search).

    Parameters
    ----------
    points : list of dict
        The searched architectures (:attr:`SweepResult.points`).
    family : list of dict
        The plain networks (:attr:`SweepResult.family`).
    budgets : list of float

    Returns
    -------
    list of dict
        One check per budget.
    """
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
    # cost, budget, met_budget and the budget step's dropped gates and note: the final cost
    # against the budget, per searched architecture
    columns = ["name", "budget", "lam", "cost", "met_budget", "dropped_gates", "budget_note",
               "pareto", "validation_accuracy", "test_accuracy", "final_entropy", "layers",
               "parameters"]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(result.points)
    writer.writerows([{**m, "budget": "", "lam": "", "met_budget": "", "dropped_gates": "",
                       "budget_note": "", "pareto": "family"}
                      for m in result.family])
    atomic_write_text(folder / "sweep.csv", out.getvalue())
    from ._plots import plot_front

    draw_optional(lambda: plot_front(result.points, result.family, cost=result.cost,
                                     path=folder / "front.png"), str(folder / "front.png"))
