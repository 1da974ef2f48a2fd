"""``bundlelab train`` and ``bundlelab autotune``: specs trained through a backend.

numpy, the data loaders and the framework are imported only when a command runs, so
``bundlelab --help`` stays instant.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from types import SimpleNamespace
from typing import List, Optional

import typer

from .._errors import BundleLabError
from ._app import (
    BATCH_SIZE,
    DATA,
    IMAGE_SIZE,
    NO_AUGMENT,
    N_TEST,
    N_TRAIN,
    OPTIMIZER_HELP,
    SEED,
    TRAIN_DEVICE,
    WIDTH,
    Optimizer,
    app,
    choices,
    flags_in_errors,
    load_data,
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


def _backends() -> list[str]:
    from ..training import available_backends

    return available_backends()


Backend = choices("Backend", _backends())

HELP = {
    "spec": "A spec file (.yaml/.json), or a preset: plain-N or resnet-N (N in 4, 10, 20, 30, "
    "50, 76, 100, 120), fc-DEPTHxWIDTH (e.g. fc-20x16: 20 hidden layers of 16 units). Presets "
    "take the data's input shape and classes.",
    "train_epochs": "Training epochs. The default is short, to try a network on a CPU in "
    "minutes; the paper trains 120 (TrainConfig's default).",
    "autotune_epochs": "Epochs of the final run, the network with no conflicting layer left "
    "(a run that prunes stops at the epoch that found the conflict). The default is short, to "
    "try it on a CPU; the paper trains 120 (TrainConfig's default).",
    "backend": "Framework that builds and trains the spec.",
    "seeds": "Repeat with seeds 0..N-1 and report mean ± std; each seed (and each --compare "
    "network per seed) is a trial that --executor runs.",
    "out": "Run folder; a folder holding the same run resumes it after a crash.",
    "autotune_out": "Folder of the runs (OUT/seed-K/, one per seed); the same command resumes "
    "them after a crash. With --executor ray on several machines, a path they all reach.",
    "n_samples": "Training samples on which bundles are measured after each epoch.",
    "measure_every": "Measure bundles every N epochs (and after the last).",
    "check_epochs": "Epochs of every run that may prune: 'all' (default: watch the whole run, "
    "restarting when a conflict appears) or N (the first N epochs; 1 is the paper's rule).",
    "preset": "Training setup the other options change: 'default' (AdamW at 1e-2 on a cosine "
    "schedule, incomplete last batch dropped: what trains on the embedded 8x8 digits) or "
    "'paper' (Ranger at a constant 1e-3, every batch kept; TrainConfig.paper()).",
    "optimizer": OPTIMIZER_HELP + " Default: the preset's (adamw; the paper's: ranger).",
    "lr": "Learning rate (the schedule's peak). Default: the preset's (0.01; the paper's: 0.001).",
    "weight_decay": "Weight decay: decoupled for ranger and adamw, L2 for adam and sgd. "
    "Default: the preset's (0.01).",
    "schedule": "Learning-rate schedule: cosine (from --lr to 0 over --epochs; a resumed run "
    "keeps its --epochs) or constant. Default: the preset's (cosine; the paper's: constant).",
    "train_threads": "torch's intra-op threads for the run. Default: 1 on the CPU, torch's "
    "own count on a GPU: a CPU thread pool whose threads wait for each other stalls when "
    "other processes keep the cores busy (an epoch of a small net 24x slower on 2 threads of "
    "a loaded 2-core machine), the small nets a CPU trains gain little from more, and the "
    "results then do not depend on the machine's core count (they change in their last bits "
    "with it). Raise it for a large net on an idle many-core machine.",
    "compare": "Also train these specs (e.g. resnet-50) with the same settings and seeds, for "
    "the comparison table; repeat the option.",
}

Preset = choices("Preset", ("default", "paper"))
Schedule = choices("Schedule", ("constant", "cosine"))

# Options that train and autotune share (one declaration each); None: the preset's value.
PRESET = typer.Option(Preset("default"), "--preset", help=HELP["preset"])
OPTIMIZER = typer.Option(None, "--optimizer", show_default=False, help=HELP["optimizer"])
TRAIN_LR = typer.Option(None, "--lr", show_default=False, help=HELP["lr"])
TRAIN_WEIGHT_DECAY = typer.Option(None, "--weight-decay", show_default=False,
                                  help=HELP["weight_decay"])
SCHEDULE = typer.Option(None, "--schedule", show_default=False, help=HELP["schedule"])
BACKEND = typer.Option(Backend("torch"), "--backend", help=HELP["backend"])
N_SAMPLES = typer.Option(2048, "--n-samples", "-n", min=1, help=HELP["n_samples"])
MEASURE_EVERY = typer.Option(1, "--measure-every", min=1, help=HELP["measure_every"])
#: the CLI's epochs; TrainConfig's default is the paper's 120 (the help says why they differ)
EPOCHS = 20


def resolve_spec(text: str, data, width_multiplier: float):
    """A spec from a file, or a named preset sized for ``data``."""
    from ..spec import load, preset

    path = Path(text)
    if path.suffix.lower() in (".yaml", ".yml", ".json") or path.exists():
        if width_multiplier != 1.0:
            raise BundleLabError(
                "--width-multiplier applies to presets only; scale a spec file with "
                "bundlelab.spec.scale_width"
            )
        return load(path)
    with flags_in_errors():
        return preset(text, input_shape=data.input_shape, n_classes=data.n_classes,
                      width_multiplier=width_multiplier)


def _config(preset, optimizer, lr, weight_decay, schedule, **options):
    """The preset's TrainConfig with the options given on the command line."""
    from ..training import TrainConfig

    given = {"optimizer": None if optimizer is None else optimizer.value,
             "learning_rate": lr, "weight_decay": weight_decay,
             "schedule": None if schedule is None else schedule.value}
    options.update({k: v for k, v in given.items() if v is not None})
    with flags_in_errors():
        return TrainConfig.paper(**options) if preset.value == "paper" else TrainConfig(**options)


def _check_epochs(text: str):
    """``--check-epochs``: N (an int >= 1) or ``"all"``, as ``autotune()`` takes it."""
    text = text.strip().lower()
    if text == "all":
        return text
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise BundleLabError(
        f"The '--check-epochs' option must be an int >= 1 or 'all'. Got {text!r} instead."
    )


def _mean_std(values, fmt: str = ".3g") -> str:
    values = list(values)
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.fmean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def comparison_rows(groups: dict) -> list[dict]:
    """One row per network (name -> list of TrainingResult over seeds): the paper's Table 1."""
    rows = []
    for name, results in groups.items():
        rows.append({
            "name": name,
            "seeds": len(results),
            "layers": _mean_std((r.layers for r in results), ".3g"),
            "test_accuracy_pct": _mean_std((100 * r.test_accuracy for r in results), ".1f"),
            "checkpoint_mb": _mean_std(r.checkpoint_mb for r in results),
            "ms_per_step": _mean_std(r.ms_per_step for r in results),
            "final_entropy": _mean_std((r.final_entropy for r in results), ".2g"),
            "accuracy_mean": statistics.fmean(r.test_accuracy for r in results),
        })
    return rows


def _print_rows(rows: list[dict], title: str) -> None:
    from rich.table import Table

    table = Table(title=plain_text(title))
    columns = ["name", "seeds", "layers", "test_accuracy_pct", "checkpoint_mb", "ms_per_step",
               "final_entropy"]
    heads = ["network", "seeds", "layers", "test acc. [%]", "checkpoint [MB]", "time/step [ms]",
             "H^L (last)"]
    for head in heads:  # plain_text: "[ms]" would be read as rich markup and vanish
        table.add_column(plain_text(head), justify="left" if head == "network" else "right")
    for row in rows:
        table.add_row(*(plain_text(row[c]) for c in columns))
    stdout_console(width=200).print(table)


def _write_rows(folder: Path, stem: str, rows: list[dict]) -> None:
    import csv
    import io

    from .._atomic import atomic_write_text

    atomic_write_text(folder / f"{stem}.json", json.dumps(rows, indent=2) + "\n")
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(folder / f"{stem}.csv", out.getvalue())


@app.command()
def train(
    spec: str = typer.Argument(..., metavar="SPEC", show_default=False, help=HELP["spec"]),
    data: str = DATA,
    epochs: int = typer.Option(EPOCHS, "--epochs", min=1, help=HELP["train_epochs"]),
    preset: Preset = PRESET,
    optimizer: Optional[Optimizer] = OPTIMIZER,
    lr: Optional[float] = TRAIN_LR,
    weight_decay: Optional[float] = TRAIN_WEIGHT_DECAY,
    schedule: Optional[Schedule] = SCHEDULE,
    batch_size: int = BATCH_SIZE,
    width_multiplier: float = WIDTH,
    backend: Backend = BACKEND,
    device: str = TRAIN_DEVICE,
    seed: int = SEED,
    out: Path = typer.Option(Path("runs/train"), "--out", help=HELP["out"]),
    no_augment: bool = NO_AUGMENT,
    n_train: Optional[int] = N_TRAIN,
    n_test: Optional[int] = N_TEST,
    image_size: Optional[int] = IMAGE_SIZE,
    n_samples: int = N_SAMPLES,
    measure_every: int = MEASURE_EVERY,
    threads: Optional[int] = typer.Option(None, "--threads", min=1, show_default=False,
                                          help=HELP["train_threads"]),
) -> None:
    """Train a spec, recording the bundle entropy of every layer after each epoch.

    Writes the run folder (checkpoint every epoch, run.json, spec.yaml; at the end result.json
    and entropy.png, the H^l(t) heatmap). Run the same command again to resume after a crash.
    """
    from .._trials import trial_threads
    from ..executors import torch_threads
    from ..training import fit

    config = _config(preset, optimizer, lr, weight_decay, schedule, epochs=epochs,
                     batch_size=batch_size, seed=seed, device=device,
                     augment=not no_augment, n_samples=n_samples, measure_every=measure_every)
    dataset = load_data(data, n_train=n_train, n_test=n_test, image_size=image_size, seed=seed)
    net = resolve_spec(spec, dataset, width_multiplier)
    with flags_in_errors():  # --threads with another backend than torch: one line
        threads = trial_threads(cli_threads(threads, device, backend.value), backend.value)
    with torch_threads(threads):
        result = fit(net, dataset, backend=backend.value, config=config, directory=out,
                     progress=True)
    rows = comparison_rows({net.name: [result]})
    _print_rows(rows, f"{net.name} on {dataset.name}, {epochs} epochs")
    typer.echo(f"run folder: {out}")


@app.command()
def autotune(
    spec: str = typer.Argument("plain-120", metavar="SPEC", help=HELP["spec"]),
    data: str = DATA,
    epochs: int = typer.Option(EPOCHS, "--epochs", min=1, help=HELP["autotune_epochs"]),
    preset: Preset = PRESET,
    optimizer: Optional[Optimizer] = OPTIMIZER,
    lr: Optional[float] = TRAIN_LR,
    weight_decay: Optional[float] = TRAIN_WEIGHT_DECAY,
    schedule: Optional[Schedule] = SCHEDULE,
    batch_size: int = BATCH_SIZE,
    width_multiplier: float = WIDTH,
    backend: Backend = BACKEND,
    device: str = TRAIN_DEVICE,
    seeds: int = typer.Option(1, "--seeds", min=1, help=HELP["seeds"]),
    out: Path = typer.Option(Path("runs/autotune"), "--out", help=HELP["autotune_out"]),
    check_epochs: str = typer.Option("all", "--check-epochs", metavar="N|all",
                                     help=HELP["check_epochs"]),
    compare: Optional[List[str]] = typer.Option(
        None, "--compare", show_default=False, help=HELP["compare"]
    ),
    no_augment: bool = NO_AUGMENT,
    n_train: Optional[int] = N_TRAIN,
    n_test: Optional[int] = N_TEST,
    image_size: Optional[int] = IMAGE_SIZE,
    n_samples: int = N_SAMPLES,
    measure_every: int = MEASURE_EVERY,
    executor: ExecutorName = EXECUTOR,
    workers: Optional[int] = WORKERS,
    ray_address: Optional[str] = RAY_ADDRESS,
    threads: Optional[int] = THREADS,
) -> None:
    """Auto-tune a network's depth: remove conflicting layers and retrain (the paper's 3.6).

    Trains SPEC (default: the paper's 120-layer plain net); after a run's first epoch(s) the
    first layer with bundle entropy > 0 and the rest of its stage are removed and training
    restarts from scratch, until no layer conflicts; the final network trains --epochs epochs.
    With --seeds N it runs N times; with --compare resnet-50 it also trains that network and
    prints the paper's Table 1 (layers, accuracy, checkpoint MB, time per step, mean ± std).
    Writes OUT/seed-K/ (autotune.json, evolution.csv, final-spec.yaml, one folder per restart)
    and OUT/comparison.csv; the same command resumes after a crash. Each seed, and each
    --compare network per seed, is a trial: --executor processes or ray runs them in
    parallel, with the same results as in-process; OUT/autotune-progress.json counts the
    trials done, running and failed.
    """
    from ..datasets import DatasetSource
    from .._trials import TrainingTrial, run_training_trial, trial_threads
    from ..spec import to_dict

    check_epochs = _check_epochs(check_epochs)

    configs = [
        _config(preset, optimizer, lr, weight_decay, schedule, epochs=epochs,
                batch_size=batch_size, seed=seed, device=device,
                augment=not no_augment, n_samples=n_samples, measure_every=measure_every)
        for seed in range(seeds)
    ]
    with flags_in_errors():
        runner = executor_from_options(executor, workers, ray_address)
        threads = trial_threads(cli_threads(threads, device, backend.value), backend.value)
    # the trials load the data where they run, from this description
    source = DatasetSource(data, n_train=n_train, n_test=n_test, image_size=image_size, seed=0)
    with flags_in_errors():
        dataset = source.load()
    net = resolve_spec(spec, dataset, width_multiplier)
    baselines = {name: resolve_spec(name, dataset, width_multiplier) for name in compare or []}
    folder = out.absolute()  # the trials' folders, wherever they run
    common = dict(data=source, backend=backend.value, check_epochs=check_epochs,
                  progress=runner.in_process, threads=threads)
    trials, groups = [], []
    for config in configs:
        seed = config.seed
        trials.append(TrainingTrial(kind="autotune", spec=to_dict(net), config=config,
                                    directory=str(folder / f"seed-{seed}"), **common))
        groups.append("auto-tune")
        for name, baseline in baselines.items():
            trials.append(TrainingTrial(kind="fit", spec=to_dict(baseline), config=config,
                                        directory=str(folder / f"{name}-seed-{seed}"),
                                        **common))
            groups.append(name)
    folder.mkdir(parents=True, exist_ok=True)
    with flags_in_errors(), runner:
        outcomes = runner.map(run_training_trial, trials,
                              names=[Path(t.directory).name for t in trials],
                              summary=folder / "autotune-progress.json", what="trials")
    results: dict[str, list] = {"auto-tune": [], **{name: [] for name in baselines}}
    for group, outcome in zip(groups, outcomes):
        results[group].append(SimpleNamespace(**outcome))
        if outcome["evolution_csv"] is not None:
            typer.echo(f"seed {outcome['seed']}: auto-tune evolution\n{outcome['evolution_csv']}")
    rows = comparison_rows(results)
    _write_rows(out, "comparison", rows)
    _print_rows(rows, f"auto-tune from {net.name} on {dataset.name}")
    typer.echo(f"results: {out}/comparison.csv, {out}/seed-*/evolution.csv, "
               f"{out}/seed-*/final-spec.yaml")
