"""``bundlelab search``: the budgeted architecture search, from the command line.

numpy, the data and the framework are imported only when the command runs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional

import typer

from .._errors import BundleLabError
from ._app import (
    BATCH_SIZE,
    DATA,
    NO_AUGMENT,
    N_TEST,
    N_TRAIN,
    OPTIMIZER_HELP,
    SEED,
    TRAIN_DEVICE,
    WEIGHT_DECAY_HELP,
    WIDTH,
    Optimizer,
    app,
    choices,
    flags_in_errors,
    plain_text,
    stdout_console,
)
from ._executor import (
    EXECUTOR,
    RAY_ADDRESS,
    THREADS,
    WORKERS,
    ExecutorName,
    cli_threads,
    executor_from_options,
)


def _penalties() -> tuple[str, ...]:
    from ..search._search import PENALTIES

    return tuple(PENALTIES)


Penalty = choices("Penalty", _penalties())

HELP = {
    "budget_step": "Final budget step (a departure from the paper, docs/search.md): when the "
    "architecture of the gates with p > 0.5 costs more than the budget, turn off the gates of "
    "lowest probability, keeping an input-to-output path, until it fits; sweep.csv states the "
    "final cost against the budget.",
    "supernet": "A super-network spec file (.yaml/.json; optional edges are the gates), or "
    "resnet-fabric-N (N = 6n+2: 20, 32, 44, 56, 110) or conv-fabric-W (W columns).",
    "cost": "The constrained cost: flops, params, latency (timed on --device) or parallel:N "
    "(rounds on N machines).",
    "budget": "Maximal cost C; repeat for a sweep (Pareto front over all runs).",
    "lam": "lambda of the cost penalty (> 0); repeat to sweep; default: 10^-m for a budget of "
    "order of magnitude m.",
    "penalty": "hinge: max(0, cost - C); abs: |cost - C|.",
    "warmup": "Epochs training the whole super-network before the gates learn. Short by "
    "default, to try a search on a CPU; the paper (and SearchConfig) use 50.",
    "search_epochs": "Epochs of sampling architectures after the warm-up. Short by default, "
    "to try a search on a CPU; SearchConfig uses 100.",
    "retrain_epochs": "Epochs retraining each found architecture (and each family member).",
    "optimizer": OPTIMIZER_HELP + " adamw by default, as TrainConfig's: ranger (the bundle "
    "paper's) learns too slowly for a search's short runs (docs/results.md).",
    "lr": "Training learning rate alpha (the cosine schedule's peak). Default: TrainConfig's "
    "(0.01).",
    "weight_decay": WEIGHT_DECAY_HELP + " 1e-4 by default here, the usual value for ResNets "
    "(TrainConfig's 0.01 is the bundle paper's, with ranger).",
    "gate_lr": "Learning rate of the gate logits (Adam).",
    "family": "Also train the plain family (ResNets with fewer blocks, narrower fabrics) for the "
    "comparison and the front plot; on by default here, as the comparison is what the sweep "
    "is for (sweep() in Python takes the family as a list, none by default).",
    "out": "Search folder: one sub-folder per search and per retraining; rerun to resume. "
    "With --executor ray on several machines, a path they all reach.",
    "seeds": "Run every search (and family member) with the seeds --seed, --seed + 1, ..., N "
    "of them; sweep.csv lists every trial and, with N > 1, their means and standard "
    "deviations.",
}

_FABRIC = re.compile(r"^(resnet-fabric|conv-fabric)-(\d+)$")
RESNET_FAMILY = (1, 2, 3, 5, 7, 9, 18)  # ResNet-8, 14, 20, 32, 44, 56, 110
FABRIC_FAMILY = (1, 2, 4, 8)


def resolve_supernet(text: str, data, width_multiplier: float):
    """A super-network (file or preset name) and its plain family, sized for ``data``."""
    from ..search import conv_fabric, resnet_fabric
    from ..spec import load

    match = _FABRIC.match(text)
    shape, classes = tuple(data.input_shape), data.n_classes
    if match is None:
        if Path(text).suffix.lower() in (".yaml", ".yml", ".json") or Path(text).exists():
            return load(text), []
        raise BundleLabError(
            f"unknown super-network {text!r}: give a spec file (.yaml, .json), resnet-fabric-N "
            "or conv-fabric-W"
        )
    kind, number = match[1], int(match[2])
    if kind == "resnet-fabric":
        if (number - 2) % 6 or number < 8:
            raise BundleLabError(
                f"resnet-fabric-{number}: N must be 6n+2 (8, 14, 20, 32, 44, 56, 110, ...)"
            )
        n = (number - 2) // 6
        family = [resnet_fabric(m, extra=False, width_multiplier=width_multiplier,
                                input_shape=shape, n_classes=classes)
                  for m in RESNET_FAMILY if m <= n]
        return resnet_fabric(n, width_multiplier=width_multiplier, input_shape=shape,
                             n_classes=classes), family
    channels = max(1, round(128 * width_multiplier))
    family = [conv_fabric(w, channels=channels, input_shape=shape, n_classes=classes)
              for w in FABRIC_FAMILY if w <= number]
    return conv_fabric(number, channels=channels, input_shape=shape, n_classes=classes), family


@app.command()
def search(
    supernet: str = typer.Argument(..., metavar="SUPERNET", show_default=False,
                                   help=HELP["supernet"]),
    cost: str = typer.Option("flops", "--cost", help=HELP["cost"]),
    budget: List[float] = typer.Option(..., "--budget", show_default=False, help=HELP["budget"]),
    lam: Optional[List[float]] = typer.Option(None, "--lambda", show_default=False,
                                              help=HELP["lam"]),
    penalty: Penalty = typer.Option(Penalty("hinge"), "--penalty", help=HELP["penalty"]),
    data: str = DATA,
    warmup_epochs: int = typer.Option(5, "--warmup-epochs", min=0, help=HELP["warmup"]),
    search_epochs: int = typer.Option(20, "--search-epochs", min=1, help=HELP["search_epochs"]),
    retrain_epochs: int = typer.Option(20, "--retrain-epochs", min=1,
                                       help=HELP["retrain_epochs"]),
    optimizer: Optimizer = typer.Option(Optimizer("adamw"), "--optimizer",
                                        help=HELP["optimizer"]),
    lr: Optional[float] = typer.Option(None, "--lr", show_default=False, help=HELP["lr"]),
    weight_decay: float = typer.Option(1e-4, "--weight-decay", help=HELP["weight_decay"]),
    batch_size: int = BATCH_SIZE,
    gate_lr: float = typer.Option(0.01, "--gate-lr", help=HELP["gate_lr"]),
    width_multiplier: float = WIDTH,
    family: bool = typer.Option(True, "--family/--no-family", help=HELP["family"]),
    budget_step: bool = typer.Option(True, "--budget-step/--no-budget-step",
                                     help=HELP["budget_step"]),
    device: str = TRAIN_DEVICE,
    seed: int = SEED,
    seeds: int = typer.Option(1, "--seeds", min=1, help=HELP["seeds"]),
    out: Path = typer.Option(Path("runs/search"), "--out", help=HELP["out"]),
    no_augment: bool = NO_AUGMENT,
    n_train: Optional[int] = N_TRAIN,
    n_test: Optional[int] = N_TEST,
    executor: ExecutorName = EXECUTOR,
    workers: Optional[int] = WORKERS,
    ray_address: Optional[str] = RAY_ADDRESS,
    threads: Optional[int] = THREADS,
) -> None:
    """Find the most accurate network that costs at most C (budgeted super networks).

    Trains SUPERNET with its gates sampled per example (REINFORCE, reward -(loss + lambda *
    max(0, cost - C))), keeps the gates with p > 0.5, retrains the extracted network from
    scratch and measures its bundle entropy. Several --budget/--lambda values make a sweep:
    the Pareto front of validation accuracy against cost, reported with test accuracy, is
    plotted against the plain family. Writes OUT/sweep.csv, OUT/front.png and per search
    architecture.yaml (the chosen spec), search-log.png and gates.png. Rerun to resume.

    Each search with its retraining (per budget, lambda and seed), and each family member, is
    a trial: --executor processes or ray runs them in parallel, with the same results as
    in-process; OUT/sweep-progress.json counts the trials done, running and failed.
    """
    from ..datasets import DatasetSource
    from .._validation import check_positive_float
    from ..search import SearchConfig, get_cost, sweep
    from ..training import TrainConfig

    options = {"penalty": penalty.value, "warmup_epochs": warmup_epochs,
               "search_epochs": search_epochs, "gate_learning_rate": gate_lr,
               "budget_step": budget_step}
    with flags_in_errors():  # every option checked before any data is loaded
        check_positive_float("width_multiplier", width_multiplier)
        get_cost(cost)
        for value in budget:
            for lam_value in lam or [None]:
                SearchConfig(budget=value, cost=cost, lam=lam_value, **options)
        config = TrainConfig(optimizer=optimizer.value,
                             **({} if lr is None else {"learning_rate": lr}),
                             weight_decay=weight_decay, batch_size=batch_size, seed=seed,
                             device=device, augment=not no_augment)
        runner = executor_from_options(executor, workers, ray_address)
    # the trials load the data where they run, from this description
    source = DatasetSource(data, n_train=n_train, n_test=n_test, image_size=None, seed=seed)
    with flags_in_errors():
        dataset = source.load()
    net, members = resolve_supernet(supernet, dataset, width_multiplier)
    with flags_in_errors(), runner:  # made here, so closed here: sweep() leaves it open
        result = sweep(net, source, budgets=list(budget), cost=cost, lambdas=lam,
                       search=options, config=config, retrain_epochs=retrain_epochs,
                       family=members if family else [], seeds=seeds, directory=out,
                       progress=True, executor=runner,
                       threads=cli_threads(threads, device))
    _print(result, net.name, dataset.name)
    typer.echo(f"results: {out}/sweep.csv, {out}/front.png; chosen specs: "
               f"{out}/*/architecture.yaml")


def _print(result, supernet: str, data: str) -> None:
    from rich.table import Table

    several = len(result.seeds) > 1
    seeds = f", means over {len(result.seeds)} seeds" if several else ""
    table = Table(title=plain_text(f"budgeted search of {supernet} on {data} "
                                   f"({result.cost}{seeds})"))
    for head in ("network", "budget", "lambda", "cost", "within", "front", "val. acc [%]",
                 "test acc [%]", "H^L (last)"):
        table.add_column(head, justify="left" if head == "network" else "right")

    def value(row, key, fmt, scale=1):
        """``row[key]``, with its standard deviation over the seeds when there are several."""
        text = format(scale * row[key], fmt)
        std = row.get(f"{key}_std")
        return text if std is None else f"{text} ± {format(scale * std, fmt)}"

    # several seeds: the means (sweep.csv lists every trial as well)
    for p in result.means:
        within = "yes" if p["met_budget"] else (
            f"{p['met_budget_seeds']}/{p['seeds']}" if several else "NO")
        table.add_row(plain_text(p["name"]), f"{p['budget']:.4g}", f"{p['lam']:.2g}",
                      value(p, "cost", ".4g"), within, "*" if p["pareto"] else "",
                      value(p, "validation_accuracy", ".1f", 100),
                      value(p, "test_accuracy", ".1f", 100), value(p, "final_entropy", ".2g"))
    for m in result.family_means:
        table.add_row(plain_text(m["name"]), "", "", f"{m['cost']:.4g}", "", "family",
                      value(m, "validation_accuracy", ".1f", 100),
                      value(m, "test_accuracy", ".1f", 100), value(m, "final_entropy", ".2g"))
    console = stdout_console(width=200)  # the networks' names are long
    console.print(table)
    for check in result.checks:
        if not check["met_budget"]:
            console.print(f"budget {check['budget']:.4g}: the search could not meet it "
                          f"(its architecture costs {check['cost']:.4g}"
                          f"{', mean over the seeds' if several else ''})")
        elif check["best_family_member"] is not None:
            diff = 100 * (check["test_accuracy"] - check["family_test_accuracy"])
            console.print(plain_text(
                f"budget {check['budget']:.4g}: {100 * check['test_accuracy']:.1f}% vs "
                f"{check['best_family_member']} {100 * check['family_test_accuracy']:.1f}%"
                f" ({diff:+.1f} points)"))
