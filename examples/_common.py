"""What the paper-reproduction scripts share: options, threads, data, trials, figures, results.

``fc_grid.py``, ``vgg_vs_resnet_depth.py`` and ``autotune_vs_resnet.py`` import it as
``from _common import ...``; that works because Python puts a script's folder on ``sys.path``
when it runs ``python examples/<script>.py``.

Their grids run every training as a trial (:func:`run_trials`): a top-level function of the
script called on a task of plain data (names, numbers, a :class:`TrainConfig`, the run folder,
the data's description), through ``--executor inprocess`` (default: one after another in this
process, as a plain loop), ``processes`` or ``ray`` (:func:`bundlelab.executors.get_executor`).
A worker loads the data itself (:func:`trial_data`) and trains with the script's ``--threads``
(:func:`pinned_threads`), so a trial computes exactly what it computes in-process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import numba
import numpy as np
import torch

from bundlelab.datasets import Dataset, load_dataset
from bundlelab.training import OPTIMIZERS, TrainConfig


def add_training_arguments(parser: argparse.ArgumentParser, out_default: Path, *, lr: float,
                           crop_padding: int | None = None,
                           epochs_help: str | None = None) -> None:
    """Add the options every script shares: data, training, threads, resume, quick and out.

    ``--epochs``, ``--seeds``, ``--n-train`` and ``--n-test`` default to None, for
    :func:`fill_defaults` to fill from the script's quick or full setting.

    Parameters
    ----------
    parser : argparse.ArgumentParser
    out_default : Path
        Default of ``--out``, the folder the results are written to.
    lr : float
        Default of ``--lr``.
    crop_padding : int or None, default=None
        Default of ``--crop-padding``; None: 0 on digits, else the library's default (an
        eighth of the image side), as :func:`start_experiment` sets it.
    epochs_help : str or None, default=None
        Help of ``--epochs``.
    """
    parser.add_argument("--data", default="digits", help="digits, or mnist:DIR, cifar10:DIR, ...")
    parser.add_argument("--image-size", type=int, default=None,
                        help="resize digits' 8 x 8 images to this side (bilinear), e.g. 32 for "
                             "the paper's scale; other data keep their size")
    parser.add_argument("--n-train", type=int, help="seeded training subset (default: all)")
    parser.add_argument("--n-test", type=int, help="seeded test subset (default: all)")
    parser.add_argument("--epochs", type=int, help=epochs_help)
    parser.add_argument("--seeds", type=int, nargs="+")
    # AdamW: what the results in docs/results.md were measured with
    parser.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--crop-padding", type=int, default=crop_padding,
                        help="random-crop padding in pixels (default 0: no crops)"
                        if crop_padding == 0 else
                        "random-crop padding in pixels (default: 0 on digits, else an "
                        "eighth of the image side)")
    parser.add_argument("--n-samples", type=int, default=2048,
                        help="training samples measured for bundles (default 2048)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch and numba (1 is fastest for these small "
                             "nets on a shared 2-core CPU)")
    parser.add_argument("--resume", action="store_true",
                        help="keep every run's folder under OUT/runs and resume from it")
    add_executor_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="a tiny setting, for tests")
    parser.add_argument("--out", type=Path, default=out_default)


def positive_int(text: str) -> int:
    """An argparse type: an int >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1; got {text}")
    return value


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--executor``, ``--workers`` and ``--ray-address``: where the grid's trials run."""
    parser.add_argument("--executor", default="inprocess",
                        choices=("inprocess", "processes", "ray"),
                        help="where the trials run: inprocess (default: one after another in "
                             "this process), processes (local worker processes) or ray (a Ray "
                             "instance or cluster); results are the same")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="trials at once (processes: default the CPU count; ray: what the "
                             "cluster holds); inprocess runs one")
    parser.add_argument("--ray-address", default=None,
                        help="--executor ray: 'auto' joins the cluster started on this machine "
                             "(ray start --head), HOST:PORT another; default: a local instance. "
                             "Run folders (--resume) must be on storage every node reaches")


def fill_defaults(args: argparse.Namespace, quick: dict, full: dict) -> None:
    """Set every option of ``args`` left at None from ``quick`` (with ``--quick``) or ``full``."""
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def limit_threads(n: int) -> None:
    """Oversubscribed cores slow small nets down many times: ``n`` threads in torch and numba."""
    torch.set_num_threads(n)
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def start_experiment(args: argparse.Namespace) -> tuple[Dataset, float]:
    """Limit the threads, start the clock and load the data: ``(data, perf_counter at start)``.

    A ``--crop-padding`` left at None becomes 0 on digits, where one-pixel shifts of 8 x 8
    images slow training a lot; elsewhere None leaves the library's default.
    """
    limit_threads(args.threads)
    started = time.perf_counter()
    data = trial_data(data_description(args))
    if args.crop_padding is None and data.name == "digits":
        args.crop_padding = 0
    return data, started


def data_description(args: argparse.Namespace) -> dict:
    """What :func:`trial_data` needs to load the script's data set where a trial runs."""
    return {"name": args.data, "image_size": args.image_size, "n_train": args.n_train,
            "n_test": args.n_test}


#: data sets loaded by this process, by their description (a worker loads each once)
_LOADED: dict[tuple, Dataset] = {}


def trial_data(description: dict) -> Dataset:
    """The data set of ``description`` (:func:`data_description`), loaded once per process.

    Loading is deterministic (seeded subsets), so a worker's copy equals the driver's.
    """
    key = tuple(sorted(description.items()))
    if key not in _LOADED:
        _LOADED[key] = load_data(description["name"], image_size=description["image_size"],
                                 n_train=description["n_train"], n_test=description["n_test"])
    return _LOADED[key]


@contextlib.contextmanager
def pinned_threads(threads: int):
    """torch's and numba's threads set to ``threads`` inside the block, restored after.

    torch's results depend on its intra-op threads, and workers start with other numbers
    (Ray's with one, local worker processes with their share of the cores), so every trial
    computes with the script's ``--threads``, as the in-process run does.
    """
    from bundlelab.executors import torch_threads

    before = numba.get_num_threads()
    with torch_threads(threads):
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        try:
            yield
        finally:
            numba.set_num_threads(before)


def run_trials(fn, tasks: list, names: list, args: argparse.Namespace) -> list:
    """``[fn(task) for task in tasks]`` on ``--executor``, results in task order.

    ``fn`` is a top-level function of the script (sent to workers by reference) and the tasks
    plain, picklable data.  Off this process, ``OUT/progress.json`` holds the counts of done,
    running and failed trials and one entry per trial (state, attempts, last error, seconds),
    rewritten at every change; stderr shows the counts when it is a terminal.  A failed trial
    is retried twice (it resumes from its run folder with ``--resume``).
    """
    from bundlelab.executors import get_executor

    if args.executor == "inprocess" and args.workers not in (None, 1):
        raise SystemExit(f"--workers {args.workers} needs --executor processes or ray; "
                         "inprocess runs one trial at a time")
    summary = None
    if args.executor != "inprocess":  # in-process the trials' own output shows the progress
        args.out.mkdir(parents=True, exist_ok=True)
        summary = args.out / "progress.json"
    with get_executor(args.executor, workers=args.workers, address=args.ray_address) as executor:
        return executor.map(fn, tasks, names=names, summary=summary, what="trials")


def run_folder(args: argparse.Namespace, name: str) -> str | None:
    """The run folder ``OUT/runs/<name>`` with ``--resume`` (absolute: workers may start
    elsewhere), else None."""
    return str((args.out / "runs" / name).absolute()) if args.resume else None


def load_data(name: str, *, image_size: int | None = None, n_train: int | None = None,
              n_test: int | None = None) -> Dataset:
    """``load_dataset(name, ...)``, with digits optionally resized to ``image_size`` pixels.

    On 8 x 8 digits the conv family's stages c and d see 1 x 1 maps; the paper's inputs are
    32 px and larger.  Resizing the embedded digits (bilinear, nothing downloaded) gives the
    family 16/16/8/4/2-pixel maps at 32 px.  The resized images are standardised again with
    the training split's mean and standard deviation (interpolation smooths them, so the
    8 px statistics no longer hold).  The data set keeps the name ``digits`` so that the
    scripts' digits defaults (no random crops) still apply.
    """
    data = load_dataset(name, n_train=n_train, n_test=n_test)
    if image_size is None or data.input_shape[1:] == (image_size, image_size):
        return data
    if data.name != "digits":
        raise SystemExit(f"--image-size resizes only digits; {data.name} is "
                         f"{data.input_shape[1]} px, leave --image-size out")
    if image_size < 8:
        raise SystemExit(f"--image-size must be at least 8; got {image_size}")

    def resize(x):
        return torch.nn.functional.interpolate(torch.from_numpy(x), size=(image_size,) * 2,
                                               mode="bilinear", align_corners=False).numpy()

    x_train, x_test = resize(data.x_train), resize(data.x_test)
    mean, std = float(x_train.mean(dtype=np.float64)), float(x_train.std(dtype=np.float64))
    x_train = np.ascontiguousarray((x_train - mean) / std, dtype=np.float32)
    x_test = np.ascontiguousarray((x_test - mean) / std, dtype=np.float32)
    return Dataset(data.name, x_train, data.y_train, x_test, data.y_test, data.classes, data.flip)


def training_config(args: argparse.Namespace, seed: int) -> TrainConfig:
    """The :class:`TrainConfig` of the command-line options, with ``seed``."""
    return TrainConfig(epochs=args.epochs, optimizer=args.optimizer, learning_rate=args.lr,
                       batch_size=args.batch_size, crop_padding=args.crop_padding,
                       n_samples=args.n_samples, seed=seed, device=args.device)


def save_png(fig, path: Path) -> None:
    """Lay ``fig`` out tightly, write it to ``path`` as a PNG (90 dpi) and close it."""
    import matplotlib.pyplot as plt  # the script has chosen the backend before importing it

    fig.tight_layout()
    fig.savefig(path, format="png", dpi=90)
    plt.close(fig)


def dataset_summary(data: Dataset) -> dict:
    """What the results record of the data: name, split sizes, input shape, classes."""
    return {"name": data.name, "n_train": len(data.y_train), "n_test": len(data.y_test),
            "input_shape": list(data.input_shape), "n_classes": data.n_classes}


def write_results(document: dict, out: Path, name: str, *, plot, started: float) -> None:
    """Write ``document`` to ``out/<name>.json`` and ``plot(document, out/<name>.png)``.

    ``document["seconds"]`` is set first to the seconds since ``started`` (a
    :func:`time.perf_counter` value).
    """
    document["seconds"] = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    plot(document, out / f"{name}.png")
