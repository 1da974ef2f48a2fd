"""Model selection: searches over budgets, lambdas and seeds, retrained, and their Pareto front.

Each (budget, lambda, seed) runs one :class:`BudgetedSearch`; its deterministic architecture is
extracted and retrained from scratch on the search-training split, which gives its validation
accuracy (mean of the last epochs), its test accuracy (after the last epoch) and the bundle
entropy of its measured layers.  The Pareto front is taken on validation accuracy against
cost (the supplementary's protocol) and reported with test accuracies.  The plain family the
super-network was drawn from (ResNets, narrower fabrics) is trained with the same data, split
and epochs for comparison.

Each search with its retraining, and each family member, is a *trial* (:class:`SweepTrial`,
run by :func:`run_sweep_trial`): a picklable task that resumes from its folder, which an
executor runs in this process (the default), in local worker processes or on Ray
(:mod:`bundlelab.executors`).  Every trial sets torch's intra-op threads to one number
(:func:`bundlelab._trials.trial_threads`), so its results are the same wherever it runs.
With several seeds the results also hold the means over the seeds.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import numbers
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._atomic import atomic_write_text
from .._errors import BundleLabError
from .._validation import (
    check_instance,
    check_int,
    check_positive_float,
    check_positive_int,
    check_seed,
    checked_keywords,
    short_repr,
)
from .._trials import trial_data, trial_threads
from ..spec import Spec, layer_count, parameter_count, to_dict
from ..training import Backend, FolderLock, TrainConfig, Training, check_data
from ..training._folder import clean_leftovers, draw_optional
from ._costs import LatencyCost, get_cost
from ._graph import GatedGraph
from ._search import (
    BudgetedSearch,
    SearchConfig,
    architecture_costs,
    budget_magnitude,
    check_budget,
    check_reachable,
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
    """Every trial (searched architecture or family member, per seed), their means over the
    seeds, and the per-budget checks.

    Attributes
    ----------
    points : list of dict
        One per (budget, lambda, seed): the search's outcome and its retraining.
    family : list of dict
        One per (plain network compared with, seed).
    checks : list of dict
        One per budget (:func:`budget_checks`, on :attr:`means`).
    cost : str
        The cost the budgets bound.
    seeds : list of int
        The seeds (``TrainConfig.seed`` of each trial).
    means : list of dict
        One per (budget, lambda): the mean over the seeds of each number (``<key>_std`` its
        standard deviation, None for one seed), ``met_budget`` when every seed met it, and
        ``pareto`` on the means.
    family_means : list of dict
        One per plain network, likewise.
    """

    points: list
    family: list
    checks: list
    cost: str
    seeds: list = field(default_factory=list)
    means: list = field(default_factory=list)
    family_means: list = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (what ``sweep.json`` holds)."""
        return {"cost": self.cost, "seeds": self.seeds, "points": self.points,
                "family": self.family, "means": self.means, "family_means": self.family_means,
                "checks": self.checks}


SweepResult.__init__ = checked_keywords(SweepResult.__init__)  # type: ignore[method-assign]

#: the summary file of a sweep's trials (done / running / failed, one entry per trial)
PROGRESS_FILE = "sweep-progress.json"
#: the numbers averaged over the seeds (with their standard deviation)
_AVERAGED = ("cost", "dropped_gates", "search_validation_accuracy", "validation_accuracy",
             "test_accuracy", "final_entropy", "layers", "parameters", "checkpoint_mb",
             "ms_per_step")


@dataclass(frozen=True)
class SweepTrial:
    """One trial of a sweep: a search and the retraining of its architecture (``search``
    given), or the training of a plain family member (``search`` None).

    Picklable and cheap to send: the spec as :func:`bundlelab.spec.to_dict` gives it, the
    data's arrays, the options; it resumes from its folders, so a retry loses nothing.

    Attributes
    ----------
    name : str
        The point's name (and its folder's).
    spec : dict
        The super-network (a search) or the family member.
    data : bundlelab.datasets.Dataset
    config : TrainConfig
        The search's training options, seeded; the retraining replaces ``epochs`` by
        ``retrain_epochs``.
    retrain_epochs : int
    cost : str
    backend : str or Backend
    directory : str or None
        The trial's folder (the search's; the retraining is its ``retrain`` sub-folder), an
        absolute path every worker can reach.
    search : dict or None
        The :class:`SearchConfig` fields, budget, cost and lambda included.
    validation_fraction : float
        The held-out fraction of the training set (:func:`validation_split`) on which the
        retrained networks, family members included, are validated.
    progress : bool
        Progress bars of the runs themselves (in-process only).
    threads : int or None
        torch's intra-op threads during the trial (None: left as they are); see
        :func:`bundlelab.executors.torch_threads`.
    """

    name: str
    spec: dict
    data: Any
    config: TrainConfig
    retrain_epochs: int
    cost: str
    backend: Any
    directory: str | None
    search: dict | None = None
    validation_fraction: float = 0.1
    progress: bool = False
    threads: int | None = None


def run_sweep_trial(trial: SweepTrial) -> dict[str, Any]:
    """Run (or resume) one :class:`SweepTrial`; return its point (plain data)."""
    from ..executors import torch_threads
    from ..spec import from_dict

    with torch_threads(trial.threads):
        return _trial(trial, from_dict(trial.spec))


def _trial(trial: SweepTrial, spec: Spec) -> dict[str, Any]:
    data, config = trial_data(trial.data), trial.config
    sub = (lambda name: None) if trial.directory is None else (
        lambda name: Path(trial.directory, name))
    split = validation_split(data, fraction=trial.validation_fraction, seed=config.seed)
    retrain_config = config.replace(epochs=trial.retrain_epochs)
    if trial.search is None:
        graph = GatedGraph(spec)
        alive, live = graph.real_architecture(graph.all_on()[None])
        trained = _retrain(spec, data, split, retrain_config, sub(""), trial.backend,
                           trial.progress)
        return {"name": spec.name, "seed": config.seed,
                "cost": float(get_cost(trial.cost)(graph, alive, live)[0]),
                "costs": architecture_costs(spec), **trained}
    settings = SearchConfig(**trial.search)
    with BudgetedSearch(spec, data, settings, config=config, backend=trial.backend,
                        directory=sub(""), progress=trial.progress) as run:
        found = run.run()
    trained = _retrain(found.spec, data, split, retrain_config, sub("retrain"), trial.backend,
                       trial.progress)
    return {"name": trial.name, "budget": settings.budget, "lam": settings.lam,
            "seed": config.seed, "cost": found.cost, "met_budget": found.met_budget,
            "dropped_gates": len(found.dropped_gates), "budget_note": found.budget_note,
            "search_validation_accuracy": found.validation_accuracy, "costs": found.costs,
            **trained}


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
          family: list | tuple = (), seeds: int | list = 1, backend: str | Backend = "torch",
          directory: str | os.PathLike | None = None, progress: bool | None = None,
          executor: Any = "inprocess", workers: int | None = None, address: str | None = None,
          resources: dict | None = None, retries: int = 2,
          threads: int | None = None) -> SweepResult:
    """Search every (budget, lambda, seed), retrain each architecture, and compare with
    ``family``; each search with its retraining, and each family member, is a trial that
    ``executor`` runs (in this process, in local processes or on Ray).

    Parameters
    ----------
    supernet : Spec
    data : bundlelab.datasets.Dataset or bundlelab.datasets.DatasetSource
        A Dataset is sent to every trial (its arrays, pickled); a DatasetSource (what
        ``bundlelab search`` passes) is loaded once in each process that runs trials, from
        its own files, so only the source's few fields travel.
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
    seeds : int or list of int, default=1
        N: the seeds ``config.seed``, ``config.seed + 1``, ..., N of them; a list: those
        seeds.  Every (budget, lambda) and family member runs once per seed; with more than
        one seed each trial's folder name ends in ``-seedS`` and the results hold their
        means over the seeds (:attr:`SweepResult.means`).
    backend : str or Backend, default="torch"
        A :class:`bundlelab.training.SuperNetBackend` (a name, for trials off this process).
    directory : path, optional
        Sub-folders per search and retraining; everything resumes.  The folder (and each
        sub-folder while it is worked in) is locked.  Trials on other machines need it on
        storage they all reach (a shared path).  It also gets ``sweep-progress.json``: trials
        done, running and failed, and one entry per trial.
    progress : bool or None, default=None
        Progress of the trials on stderr (and, in-process, the runs' own bars and lines);
        None: when stderr is a terminal.
    executor : str or Executor, default="inprocess"
        ``"inprocess"`` (one trial after another here), ``"processes"`` (local worker
        processes) or ``"ray"`` (:func:`bundlelab.executors.get_executor`), made and closed
        here; or an Executor, used as it is and left open for the caller's next tasks.
    workers : int, optional
        Worker processes of ``"processes"`` (default: the CPU count).
    address : str, optional
        The Ray cluster of ``"ray"``: None starts (or reuses) a local one, ``"auto"`` joins
        the running one.
    resources : dict, optional
        Ray resources per trial, e.g. ``{"num_cpus": 1, "num_gpus": 1}``.
    retries : int, default=2
        Times a failed trial (an error, a dead worker) is run again; it resumes from its
        folder.
    threads : int, optional
        torch's intra-op threads in every trial; None: as many as this process uses, so that
        trials in workers compute exactly what they compute in-process (Ray starts workers
        with one thread).  torch backend only.

    Returns
    -------
    SweepResult
    """
    check_instance("supernet", supernet, Spec, "a bundlelab.spec.Spec")
    config = TrainConfig() if config is None else config
    check_instance("config", config, TrainConfig, "a TrainConfig")
    source, data = data, trial_data(data)  # a source is loaded here too, for the checks
    budgets = _positive_floats("budgets", budgets, check=check_budget)
    if lambdas is not None and not (isinstance(lambdas, (list, tuple)) and not lambdas):
        lambdas = _positive_floats("lambdas", lambdas)
    else:
        lambdas = None
    retrain_epochs = check_positive_int("retrain_epochs", retrain_epochs)
    seeds = _seeds(seeds, config.seed)
    retries = check_int("retries", retries, low=0)
    progress = resolve_progress(progress)
    options = dict(search or {})
    for reserved in ("budget", "cost", "lam"):
        if reserved in options:
            raise BundleLabError(
                f"The 'search' parameter holds {reserved!r}, which sweep() sets itself: pass "
                "budgets=, cost= and lambdas= instead"
            )
    # every search option, the data and the budgets checked before any trial starts
    SearchConfig(budget=budgets[0], cost=cost, **options)
    check_data(supernet, data)
    measure = get_cost(cost)
    if not isinstance(measure, LatencyCost):  # a measured cost is known once a search times it
        graph = GatedGraph(supernet)
        for budget in budgets:
            check_reachable(graph, measure, budget)
    members = list(family)
    for spec in members:
        check_instance("family", spec, Spec, "a list of bundlelab.spec.Spec")
        check_data(spec, data)
    threads = trial_threads(threads, backend)
    from ..executors import Executor, executor_in_use

    # an Executor made by the caller brings its own progress setting, and stays open
    in_use = executor_in_use(executor, workers=workers, address=address, resources=resources,
                             progress=None if isinstance(executor, Executor) else progress)
    with FolderLock(directory) if directory is not None else contextlib.nullcontext(), \
            in_use as runner:
        if directory is not None:
            clean_leftovers(directory)
        return _sweep(supernet, source, budgets=budgets, cost=cost, lambdas=lambdas,
                      options=options, config=config, retrain_epochs=retrain_epochs,
                      family=members, backend=backend, seeds=seeds,
                      folder=None if directory is None else Path(directory).absolute(),
                      progress=progress, runner=runner, retries=retries, threads=threads)


def _seeds(seeds: Any, first: int) -> list[int]:
    """``seeds`` (a count from ``first``, or a list of seeds) as a list of distinct seeds."""
    if isinstance(seeds, numbers.Integral) and not isinstance(seeds, bool):
        count = check_positive_int("seeds", seeds)
        return [check_seed("seeds", first + k) for k in range(count)]
    if isinstance(seeds, (list, tuple)) and seeds:
        checked = [check_seed("seeds", s) for s in seeds]
        if len(set(checked)) == len(checked):
            return checked
    raise BundleLabError(
        "The 'seeds' parameter must be a number of seeds >= 1 or a list of distinct seeds. "
        f"Got {short_repr(seeds)} instead."
    )


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
           backend, seeds, folder, progress, runner, retries, threads) -> SweepResult:
    # the trials' own bars and lines only in this process: a worker's would mix with others'
    in_process = runner.in_process
    common = dict(data=data, retrain_epochs=retrain_epochs, cost=cost, backend=backend,
                  validation_fraction=options.get("validation_fraction", 0.1),
                  progress=progress and in_process, threads=threads)
    suffix = (lambda seed: "") if len(seeds) == 1 else (lambda seed: f"-seed{seed}")
    where = (lambda name: None) if folder is None else (lambda name: str(folder / name))
    spec = to_dict(supernet)
    trials = []
    for budget in budgets:
        for lam in (lambdas or default_lambdas(budget)):
            base = f"{cost}-{budget:g}-lam{lam:g}".replace(":", "")
            for seed in seeds:
                name = base + suffix(seed)
                trials.append(SweepTrial(
                    name=name, spec=spec, config=config.replace(seed=seed),
                    directory=where(name),
                    search={**options, "budget": budget, "cost": cost, "lam": lam}, **common))
    for member in family:
        for seed in seeds:
            name = f"family-{member.name}{suffix(seed)}"
            trials.append(SweepTrial(name=name, spec=to_dict(member),
                                     config=config.replace(seed=seed), directory=where(name),
                                     **common))
    outcomes = runner.map(run_sweep_trial, trials, names=[t.name for t in trials],
                          retries=retries,
                          summary=None if folder is None else folder / PROGRESS_FILE,
                          what="trials")
    searched = [t.search is not None for t in trials]
    points = [o for o, s in zip(outcomes, searched) if s]
    members = [o for o, s in zip(outcomes, searched) if not s]
    for point, on_front in zip(points, pareto_front(points)):
        point["pareto"] = on_front
    means = _means(points, ("budget", "lam"), len(seeds))
    family_means = _means(members, ("name",), len(seeds))
    for mean, on_front in zip(means, pareto_front(means)):
        mean["pareto"] = on_front
    checks = budget_checks(means, family_means, budgets)
    result = SweepResult(points, members, checks, cost, seeds, means, family_means)
    if folder is not None:
        _write(folder, result)
    return result


def _means(rows: list[dict], keys: tuple, n_seeds: int) -> list[dict]:
    """One row per value of ``keys`` (in first-seen order): the mean over its seeds of each
    number, ``<number>_std`` (None for one seed), ``met_budget`` when every seed met it."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    means = []
    for group in groups.values():
        first = group[0]
        # the name of one seed's point without its seed
        name = first["name"] if n_seeds == 1 else first["name"].rsplit("-seed", 1)[0]
        mean = {"name": name, **{k: first[k] for k in keys if k != "name"},
                "seeds": len(group)}
        if "met_budget" in first:
            mean["met_budget"] = all(r["met_budget"] for r in group)
            mean["met_budget_seeds"] = sum(bool(r["met_budget"]) for r in group)
        for key in _AVERAGED:
            if key in first:
                values = [float(r[key]) for r in group]
                mean[key] = values[0] if len(values) == 1 else statistics.fmean(values)
                mean[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None
        means.append(mean)
    return means


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
    # against the budget, per searched architecture; then, with several seeds, one row of
    # means per (budget, lambda) and per family member (seed "mean", standard deviations in
    # the *_std columns)
    columns = ["name", "budget", "lam", "cost", "met_budget", "dropped_gates", "budget_note",
               "pareto", "validation_accuracy", "test_accuracy", "final_entropy", "layers",
               "parameters", "seed"]
    several = len(result.seeds) > 1
    if several:
        columns += ["seeds", "cost_std", "validation_accuracy_std", "test_accuracy_std",
                    "final_entropy_std"]
    family = {"budget": "", "lam": "", "met_budget": "", "dropped_gates": "",
              "budget_note": "", "pareto": "family"}
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(result.points)
    if several:
        writer.writerows([{**m, "seed": "mean"} for m in result.means])
    writer.writerows([{**m, **family} for m in result.family])
    if several:
        writer.writerows([{**m, **family, "seed": "mean"} for m in result.family_means])
    atomic_write_text(folder / "sweep.csv", out.getvalue())
    from ._plots import plot_front

    # the means: one mark per (budget, lambda) and per family member, whatever the seeds
    draw_optional(lambda: plot_front(result.means, result.family_means, cost=result.cost,
                                     path=folder / "front.png"), str(folder / "front.png"))
