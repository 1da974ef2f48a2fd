"""The budgeted search: REINFORCE on the gates of a super-network, under a cost budget.

Per batch (after the warm-up): every example samples its own architecture, each gate on with
probability ``sigmoid(gamma_j)``; the core computes each example's real architecture and its
cost; the backend takes one step on ``mean(loss_b) - mean((r_b - mean r) * log p(h_b))`` with
the reward ``r_b = -(loss_b + lambda * penalty(cost_b - C))``, where ``penalty`` is
``max(0, .)`` (default) or ``|.|``.  During the warm-up every gate is on and only the weights
learn.  Evaluation is deterministic: gate ``j`` is on iff ``sigmoid(gamma_j) > 0.5``.

Words: the *gates* are the super-network's optional edges (with their logits ``gamma`` and
probabilities); the *switches* of one architecture are its on/off values, one per gate
(sampled per example while searching, deterministic for the result).

A search folder holds ``search.json`` (options, history of every epoch with the gate
probabilities) and the checkpoint of the last finished epoch (weights, gate logits, both
optimizers), committed like a training run's (:class:`bundlelab.training.RunFolder`: locked
while the search works in it, and resumed under the same policy as a training run), so a
killed search resumes from its last epoch with the same gate state.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import sys
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import atomic_write_text
from .._errors import BundleLabError
from .._validation import (
    check_bool,
    check_choice,
    check_float,
    check_instance,
    check_int,
    check_keywords,
    check_optional_float,
    check_positive_float,
    check_positive_int,
    check_seed,
    checked_keywords,
)
from ..spec import Spec, dump, to_dict
from ..training import (
    Backend,
    RunFolder,
    SuperNetBackend,
    TrainConfig,
    check_data,
    get_backend,
    training_batches,
)
from ..training._folder import HoldsRunFolder, draw_optional
from ._costs import Cost, LatencyCost, cheapest_architecture, get_cost
from ._extract import deterministic_switches, extract, fit_to_budget
from ._graph import GatedGraph
from ..training._progress import batch_progress, resolve_progress

SEARCH_FORMAT = "bundlelab.search/1"
STATE_FILE = "search.json"
PENALTIES = ("hinge", "abs")
GATE_OPTIMIZERS = ("adam", "sgd")
#: the smallest budget: below it the default lambda, 10 ** -m for the budget's order of
#: magnitude m, is no finite float
MIN_BUDGET = sys.float_info.min


def check_budget(name: str, value: Any) -> float:
    """A budget: a finite float >= :data:`MIN_BUDGET` (about 2.2e-308)."""
    value = check_positive_float(name, value)
    if value < MIN_BUDGET:
        raise BundleLabError(
            f"The {name!r} parameter must be a float >= {MIN_BUDGET:g}, whose order of "
            f"magnitude sets the default lambda. Got {value!r} instead."
        )
    return value


def check_reachable(graph: GatedGraph, cost: Cost, budget: float) -> float:
    """The cost of ``graph``'s cheapest architecture; a one-line error when ``budget`` is
    below it (no search can meet it)."""
    _, minimum = cheapest_architecture(graph, cost)
    if budget < minimum:
        raise BundleLabError(
            f"budget {budget:g} is below the cheapest architecture of {graph.spec.name!r}, "
            f"which costs {minimum:g} ({cost.name}); raise the budget to at least {minimum:g}"
        )
    return minimum


def budget_magnitude(budget: float) -> int:
    """The order of magnitude ``m`` of a budget (``floor(log10(budget))``)."""
    return math.floor(math.log10(budget))


@dataclass(frozen=True)
class SearchConfig:
    """Options of one budgeted search (the training options are a :class:`TrainConfig`).

    Parameters
    ----------
    cost : str, default="flops"
        "flops", "params", "latency" or "parallel:N".
    budget : float
        The maximal authorised cost ``C``.
    lam : float or None, default=None
        ``lambda`` (> 0); None: ``10 ** -m`` for the budget's order of magnitude ``m``, so a
        cost overshooting the budget by ``C`` weighs about as much as the loss (the
        supplementary picks lambda around the budget's magnitude by cross-validation).
    penalty : {"hinge", "abs"}, default="hinge"
        ``max(0, cost - C)`` or ``|cost - C|``.
    warmup_epochs : int, default=50
        Epochs training the whole super-network before the gates learn (the paper: 50).
    search_epochs : int, default=100
        Epochs of sampling after the warm-up.
    gate_init : float, default=3.0
        Initial logit of every gate (``sigmoid(3) = 0.95``).
    gate_optimizer : {"adam", "sgd"}, default="adam"
    gate_learning_rate : float, default=0.01
    latency_batch_size : int, default=64
        Batch size at which the latency cost is timed.
    validation_fraction : float, default=0.1
        Fraction of the training set held out (seeded) for the deterministic architecture's
        validation accuracy; the test set is never looked at.
    budget_step : bool, default=True
        The final budget step, a departure from the paper: when the deterministic
        architecture (p > 0.5) costs more than the budget, the gates of lowest probability are
        turned off, keeping an input-to-output path, until it fits
        (:func:`bundlelab.search.fit_to_budget`); when it cannot fit, the result says so.
        False: the paper's deterministic architecture, whatever it costs.
    """

    budget: float
    cost: str = "flops"
    lam: float | None = None
    penalty: str = "hinge"
    warmup_epochs: int = 50
    search_epochs: int = 100
    gate_init: float = 3.0
    gate_optimizer: str = "adam"
    gate_learning_rate: float = 0.01
    latency_batch_size: int = 64
    validation_fraction: float = 0.1
    budget_step: bool = True

    def __post_init__(self) -> None:
        # the checks convert (numpy scalars to Python ones), so the options are JSON-ready
        check_instance("cost", self.cost, str,
                       "a cost name: 'flops', 'params', 'latency' or 'parallel:N'")
        get_cost(self.cost)
        checked = {
            "budget": check_budget("budget", self.budget),
            "lam": check_optional_float("lam", self.lam, low=0, low_open=True),
            "penalty": check_choice("penalty", self.penalty, PENALTIES),
            "warmup_epochs": check_int("warmup_epochs", self.warmup_epochs, low=0),
            "search_epochs": check_positive_int("search_epochs", self.search_epochs),
            "gate_init": check_float("gate_init", self.gate_init),
            "gate_optimizer": check_choice("gate_optimizer", self.gate_optimizer,
                                           GATE_OPTIMIZERS),
            "gate_learning_rate": check_positive_float("gate_learning_rate",
                                                       self.gate_learning_rate),
            "latency_batch_size": check_positive_int("latency_batch_size",
                                                     self.latency_batch_size),
            "validation_fraction": check_float("validation_fraction", self.validation_fraction,
                                               low=0, high=1, low_open=True, high_open=True),
            "budget_step": check_bool("budget_step", self.budget_step),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @property
    def epochs(self) -> int:
        return self.warmup_epochs + self.search_epochs

    @property
    def lam_value(self) -> float:
        """``lambda``, or its default ``10 ** -floor(log10(budget))``."""
        if self.lam is not None:
            return float(self.lam)
        return 10.0 ** -budget_magnitude(self.budget)

    def to_dict(self) -> dict[str, Any]:
        """The options as JSON-ready data (what a search folder records)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchConfig:
        """The config of :meth:`to_dict`'s data; an unknown option is a one-line error."""
        check_keywords("SearchConfig.from_dict()", data, [f.name for f in fields(cls)])
        return cls(**data)


SearchConfig.__init__ = checked_keywords(SearchConfig.__init__)  # type: ignore[method-assign]


@checked_keywords
def validation_split(data: Any, *, fraction: float = 0.1, seed: int = 0) -> Any:
    """``data`` with a seeded ``fraction`` of its training set moved into its test slots.

    The search selects architectures on this validation set and never sees the test set.

    Parameters
    ----------
    data : bundlelab.datasets.Dataset
    fraction : float
        In (0, 1); at least one sample is held out.
    seed : int

    Returns
    -------
    bundlelab.datasets.Dataset
        Named ``"<name>-validation"``.
    """
    fraction = check_float("fraction", fraction, low=0, high=1, low_open=True,
                           high_open=True)
    seed = check_seed("seed", seed)
    n = len(data.y_train)
    held = np.zeros(n, dtype=bool)
    held[np.random.default_rng([seed, 7]).choice(n, max(1, round(n * fraction)), replace=False)] = True
    return dataclasses.replace(
        data, name=f"{data.name}-validation", x_train=data.x_train[~held],
        y_train=data.y_train[~held], x_test=data.x_train[held], y_test=data.y_train[held],
    )


@dataclass
class SearchResult:
    """A finished search: the deterministic architecture, as a spec, and its costs.

    Attributes
    ----------
    supernet : Spec
    spec : Spec
        The deterministic architecture, extracted (:func:`extract`).
    gates : list of (str, str)
        The super-network's gates (optional edges), as :attr:`GatedGraph.gates`.
    probabilities : ndarray of shape (n_gates,)
        ``sigmoid(gamma)`` of every gate at the end.
    cost_name : str
    cost : float
        The architecture's cost.
    budget : float
    met_budget : bool
    validation_accuracy : float
        Of the returned architecture (after the budget step) on the validation split.
    costs : dict
        Every analytic cost of the architecture (:func:`architecture_costs`).
    history : list of dict
        One record per epoch.
    dropped_gates : list of (str, str)
        The gates with p > 0.5 that the final budget step turned off
        (``SearchConfig.budget_step``), in the order it did.
    budget_note : str
        One line: the final cost against the budget, and what the budget step did.
    """

    supernet: Spec
    spec: Spec
    gates: list
    probabilities: np.ndarray
    cost_name: str
    cost: float
    budget: float
    met_budget: bool
    validation_accuracy: float
    costs: dict
    history: list = field(default_factory=list)
    dropped_gates: list = field(default_factory=list)
    budget_note: str = ""

    def summary(self) -> dict[str, Any]:
        """The headline figures as plain JSON-ready data."""
        return {
            "supernet": self.supernet.name, "spec": self.spec.name, "cost": self.cost_name,
            "budget": self.budget, "architecture_cost": self.cost,
            "met_budget": self.met_budget, "validation_accuracy": self.validation_accuracy,
            "costs": self.costs,
            "gates_on": len(self.spec_gates_on()),
            "gates": len(self.gates),
            "dropped_gates": [list(g) for g in self.dropped_gates],
            "budget_note": self.budget_note,
        }

    def spec_gates_on(self) -> list:
        """The gates the returned architecture keeps: p > 0.5, less the dropped ones."""
        dropped = {tuple(g) for g in self.dropped_gates}
        return [g for g, p in zip(self.gates, self.probabilities)
                if p > 0.5 and tuple(g) not in dropped]


SearchResult.__init__ = checked_keywords(SearchResult.__init__)  # type: ignore[method-assign]


@checked_keywords
def architecture_costs(spec: Spec, *, costs: tuple = ("flops", "params", "parallel:1",
                                                       "parallel:2", "parallel:4")) -> dict:
    """Every analytic cost of an ordinary spec (all of it runs), by cost name.

    Parameters
    ----------
    spec : bundlelab.spec.Spec
    costs : tuple of str
        Cost names (:func:`get_cost`).

    Returns
    -------
    dict
        Cost name -> cost of the whole spec.
    """
    graph = GatedGraph(spec)
    alive, live = graph.real_architecture(graph.all_on()[None])
    return {name: float(get_cost(name)(graph, alive, live)[0]) for name in costs}


class BudgetedSearch(HoldsRunFolder):
    """A resumable budgeted search of ``supernet`` on ``data`` through a backend.

    Parameters
    ----------
    supernet : Spec
        A spec with optional edges (:func:`resnet_fabric`, :func:`conv_fabric`, or any DAG).
    data : bundlelab.datasets.Dataset
        Its training set is split into search-training and validation sets
        (:func:`validation_split`); its test set is not used.
    search : SearchConfig
    config : TrainConfig, optional
        Weights' optimizer, batch size, augmentation, seed, device (``epochs`` is ignored:
        ``search.epochs`` counts).
    backend : str or Backend, default="torch"
        A :class:`bundlelab.training.SuperNetBackend`.
    directory : path, optional
        The search folder; one holding the same search resumes (only
        :data:`bundlelab.training.RESUMABLE_OPTIONS` may change: ``search_epochs`` may grow,
        ``device`` may change).  Locked from here until :meth:`close` (or the end of a
        ``with`` block, or of the process).
    progress : bool or None, default=None
        Progress bars and a line per epoch on stderr; None: when stderr is a terminal.
    """

    @checked_keywords
    def __init__(self, supernet: Spec, data: Any, search: SearchConfig, *,
                 config: TrainConfig | None = None, backend: str | Backend = "torch",
                 directory: str | os.PathLike | None = None, progress: bool | None = None) -> None:
        check_instance("supernet", supernet, Spec, "a bundlelab.spec.Spec")
        check_instance("search", search, SearchConfig, "a SearchConfig")
        config = TrainConfig() if config is None else config
        check_instance("config", config, TrainConfig, "a TrainConfig")
        check_data(supernet, data)
        self.graph = GatedGraph(supernet)
        if not self.graph.n_gates:
            raise BundleLabError(
                f"spec {supernet.name!r} has no optional edges, so there is nothing to search; "
                "mark the edges the search may drop as 'optional' on their add nodes"
            )
        self.supernet, self.search, self.config = supernet, search, config
        self.progress = resolve_progress(progress)
        self.cost: Cost = get_cost(search.cost)
        self.backend = get_backend(backend)
        if not isinstance(self.backend, SuperNetBackend):
            raise BundleLabError(f"the {self.backend.name!r} backend cannot train super-networks")
        measured = isinstance(self.cost, LatencyCost)
        if not measured:  # a measured cost is checked once the nodes are timed
            self._check_budget()
        self.data = validation_split(data, fraction=search.validation_fraction, seed=config.seed)
        self.history: list[dict[str, Any]] = []
        self.directory = None if directory is None else Path(directory)
        self._folder = None
        if directory is not None:
            self._folder = RunFolder(directory, STATE_FILE, SEARCH_FORMAT, kind="search").lock()
        try:
            self.trainee = self.backend.build_supernet(
                supernet, config, gate_init=search.gate_init,
                gate_optimizer=search.gate_optimizer, gate_learning_rate=search.gate_learning_rate,
            )
            if measured:
                self._time_nodes()
                self._check_budget()
            self._resume()
        except BaseException:
            self.close()
            raise

    def _check_budget(self) -> None:
        self.minimum_cost = check_reachable(self.graph, self.cost, self.search.budget)

    # -- one epoch ------------------------------------------------------------------------

    @property
    def epochs_done(self) -> int:
        return len(self.history)

    @property
    def finished(self) -> bool:
        return self.epochs_done >= self.search.epochs

    def _time_nodes(self) -> None:
        self.cost.node_seconds = self.trainee.node_seconds(self.search.latency_batch_size)

    def _penalty(self, cost: np.ndarray) -> np.ndarray:
        over = cost - self.search.budget
        return np.maximum(over, 0.0) if self.search.penalty == "hinge" else np.abs(over)

    def train_epoch(self) -> dict[str, Any]:
        """One epoch (warm-up or sampling); evaluate the deterministic architecture; commit."""
        if self.finished:
            raise BundleLabError(f"the search already ran its {self.search.epochs} epochs")
        epoch = self.epochs_done + 1
        warm = epoch <= self.search.warmup_epochs
        if not warm and isinstance(self.cost, LatencyCost):
            self._time_nodes()  # a measured cost: re-measured every epoch
        rng = np.random.default_rng([self.config.seed, epoch, 1])
        all_alive, _ = self.graph.real_architecture(self.graph.all_on())
        lam = self.search.lam_value
        loss_sum = correct = seen = 0
        sampled_costs = []
        with self._progress_bar(epoch, warm) as advance:
            batches = advance(training_batches(self.data, self.config, epoch))
            for x, y in batches:
                n = len(y)
                if warm:
                    switches = np.ones((n, self.graph.n_gates), dtype=bool)
                    alive = np.broadcast_to(all_alive, (n, all_alive.size))
                    penalty = np.zeros(n)
                else:
                    p = self.trainee.gate_probabilities()
                    switches = rng.random((n, p.size)) < p
                    alive, live = self.graph.real_architecture(switches)
                    cost = self.cost(self.graph, alive, live)
                    sampled_costs.append(cost)
                    penalty = lam * self._penalty(cost)
                step = self.trainee.train_step(x, y, switches, np.ascontiguousarray(alive),
                                               penalty.astype(np.float32), reinforce=not warm)
                loss_sum += step["loss"] * step["n"]
                correct += step["correct"]
                seen += step["n"]
        probabilities = self.trainee.gate_probabilities()
        switches = deterministic_switches(probabilities)
        alive, live = self.graph.real_architecture(switches)
        consistent = bool(alive[self.graph.output])
        evaluation = self.trainee.evaluate(
            self.data.x_test, self.data.y_test, switches, alive,
            inference_batch_size=max(256, self.config.batch_size),
        )
        record = {
            "epoch": epoch, "warmup": warm, "train_loss": loss_sum / seen,
            "train_accuracy": correct / seen, "validation_accuracy": evaluation["accuracy"],
            "validation_loss": evaluation["loss"],
            "cost": float(self.cost(self.graph, alive[None], live[None])[0]) if consistent else None,
            "sampled_cost_mean": float(np.concatenate(sampled_costs).mean()) if sampled_costs else None,
            "gates_on": int(switches.sum()), "probabilities": probabilities.tolist(),
        }
        self.history.append(record)
        self._commit()
        if self.progress:
            self._print(record)
        return record

    def _progress_bar(self, epoch: int, warm: bool):
        total = self.config.batches_per_epoch(len(self.data.y_train))
        phase = "warm-up" if warm else "search"
        return batch_progress(f"{phase} epoch {epoch}/{self.search.epochs}", total,
                              show=self.progress)

    def run(self) -> SearchResult:
        """Run the remaining epochs and return the deterministic architecture."""
        while not self.finished:
            self.train_epoch()
        return self.result()

    def result(self) -> SearchResult:
        """The deterministic architecture of the gates now, its costs and the history; when the
        search is finished and has a folder, also written there (``architecture.yaml``,
        ``result.json``, and the figures ``gates.png``, ``search-log.png`` when matplotlib is
        installed)."""
        probabilities = self.trainee.gate_probabilities()
        switches = deterministic_switches(probabilities)
        alive, live = self.graph.real_architecture(switches)
        if not alive[self.graph.output]:
            raise BundleLabError(
                "the search ended on an empty architecture (no path of gates with p > 0.5 "
                "joins input and output); lower lambda or raise the budget"
            )
        cost = float(self.cost(self.graph, alive[None], live[None])[0])
        dropped: list[int] = []
        budget = self.search.budget
        if self.search.budget_step and cost > budget:
            switches, cost, dropped = fit_to_budget(self.graph, probabilities, self.cost, budget)
        validation = self.history[-1]["validation_accuracy"] if self.history else float("nan")
        if dropped:  # the history evaluated the architecture before the step: this one now
            alive, _ = self.graph.real_architecture(switches)
            validation = self.trainee.evaluate(
                self.data.x_test, self.data.y_test, switches, alive,
                inference_batch_size=max(256, self.config.batch_size))["accuracy"]
        met = cost <= budget
        note = _budget_note(self.cost.name, cost, budget, len(dropped),
                            self.search.budget_step)
        if not met:
            warnings.warn(f"bundlelab: {note}", BudgetWarning, stacklevel=2)
        elif dropped and self.progress:
            _say(note)
        # the name says what the network costs against what it was asked to cost
        spec = extract(self.supernet, switches,
                       name=f"{self.supernet.name}-{self.cost.name}-{cost:.3g}-"
                            f"{'within' if met else 'over'}-{budget:g}".replace(":", ""))
        result = SearchResult(
            supernet=self.supernet, spec=spec, gates=self.graph.gates,
            probabilities=probabilities, cost_name=self.cost.name, cost=cost,
            budget=budget, met_budget=met,
            validation_accuracy=validation, dropped_gates=[self.graph.gates[g] for g in dropped], budget_note=note,
            costs=architecture_costs(spec), history=list(self.history),
        )
        if self.directory is not None and self.finished:
            from ._plots import plot_gates, plot_search_log

            dump(spec, self.directory / "architecture.yaml")
            atomic_write_text(self.directory / "result.json",
                              json.dumps(result.summary(), indent=2) + "\n")
            draw_optional(lambda: (
                plot_gates(self.graph, probabilities, self.directory / "gates.png"),
                plot_search_log(self.history, self.search, self.directory / "search-log.png"),
            ), f"the figures of {self.directory}")
        return result

    # -- folder ---------------------------------------------------------------------------

    def _options(self) -> dict[str, Any]:
        """What makes the search, as its folder records it (see :meth:`RunFolder.resume`)."""
        return {"backend": self.backend.name, "spec": to_dict(self.supernet),
                "config": self.config.to_dict(), "search": self.search.to_dict()}

    def _commit(self) -> None:
        if self._folder is not None:
            self._folder.commit(self.epochs_done, self.backend.checkpoint_suffix,
                                self.trainee.save, {**self._options(),
                                                    "epochs_done": self.epochs_done,
                                                    "history": self.history})

    def _resume(self) -> None:
        state = None if self._folder is None else self._folder.resume(
            self._options(), length=self.search.epochs)
        if state is None:
            return
        for i, record in enumerate(state["history"]):
            self._check_record(i, record)
        if self._folder.checkpoint_path():
            self.trainee.load(self._folder.checkpoint_path())
        self.history = state["history"]

    def _check_record(self, i: int, record: dict[str, Any]) -> None:
        """Epoch ``i + 1``'s record of the search folder's history, each field checked."""
        error = self._folder.state_error
        if set(record) != set(_RECORD_FIELDS):
            raise error(f"history[{i}]", "a record of the fields " + ", ".join(_RECORD_FIELDS),
                        sorted(record))
        for name, optional in _RECORD_FIELDS.items():
            value = record[name]
            if name == "warmup":
                ok = isinstance(value, bool)
            elif name == "probabilities":
                ok = (isinstance(value, list) and len(value) == self.graph.n_gates
                      and all(_is_number(p) for p in value))
            elif name == "gates_on":
                ok = isinstance(value, int) and not isinstance(value, bool)
            else:
                ok = _is_number(value) or (optional and value is None)
            if not ok:
                expected = {"warmup": "a bool", "gates_on": "an int",
                            "probabilities": f"a list of {self.graph.n_gates} numbers"}.get(
                                name, "a number or null" if optional else "a number")
                raise error(f"history[{i}].{name}", expected, value)

    def _print(self, record: dict[str, Any]) -> None:
        from rich.console import Console

        phase = "warm-up" if record["warmup"] else "search"
        cost = "empty" if record["cost"] is None else f"{record['cost']:.4g}"
        Console(stderr=True, highlight=False).print(
            f"{phase} epoch {record['epoch']}/{self.search.epochs}: loss "
            f"{record['train_loss']:.4f}, validation {record['validation_accuracy']:.2%}, "
            f"{self.cost.name} {cost} (budget {self.search.budget:g}), gates on "
            f"{record['gates_on']}/{self.graph.n_gates}"
        )


#: the fields of a search epoch's record, and whether each may be null
_RECORD_FIELDS = {"epoch": False, "warmup": False, "train_loss": False, "train_accuracy": False,
                  "validation_accuracy": False, "validation_loss": False, "cost": True,
                  "sampled_cost_mean": True, "gates_on": False, "probabilities": False}


class BudgetWarning(UserWarning):
    """A search's architecture costs more than its budget (the budget step could not fit it,
    or was turned off)."""


def _budget_note(cost_name: str, cost: float, budget: float, dropped: int, step: bool) -> str:
    """One line: the final cost against the budget and what the budget step did."""
    if cost <= budget:
        how = (f" after the final budget step turned off {dropped} gate(s) of lowest "
               "probability" if dropped else "")
        return f"{cost_name} {cost:.4g} within the budget {budget:g}{how}"
    if not step:
        return (f"{cost_name} {cost:.4g} over the budget {budget:g} (the final budget step is "
                "off: budget_step=False)")
    return (f"{cost_name} {cost:.4g} over the budget {budget:g}: turning off {dropped} gate(s) "
            "of lowest probability left no gate that a path from input to output does not "
            "need; raise lambda or the search epochs")


def _say(line: str) -> None:
    from rich.console import Console

    Console(stderr=True, highlight=False).print(f"bundlelab: {line}")


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@checked_keywords
def search(supernet: Spec, data: Any, search: SearchConfig, *,
           config: TrainConfig | None = None, backend: str | Backend = "torch",
           directory: str | os.PathLike | None = None, progress: bool | None = None) -> SearchResult:
    """Run a budgeted search (see :class:`BudgetedSearch`) and return its architecture.

    Parameters
    ----------
    supernet : bundlelab.spec.Spec
    data : bundlelab.datasets.Dataset
    search : SearchConfig
    config : TrainConfig, optional
    backend : str or Backend, default="torch"
    directory : path, optional
        The search folder, locked while the search runs.
    progress : bool or None, default=None
        Progress bars and a line per epoch on stderr; None: when stderr is a terminal.

    Returns
    -------
    SearchResult
    """
    with BudgetedSearch(supernet, data, search, config=config, backend=backend,
                        directory=directory, progress=progress) as run:
        return run.run()
