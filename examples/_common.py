"""What the paper-reproduction scripts share: options, threads, data, figures, result files.

``fc_grid.py``, ``vgg_vs_resnet_depth.py`` and ``autotune_vs_resnet.py`` import it as
``from _common import ...``; that works because Python puts a script's folder on ``sys.path``
when it runs ``python examples/<script>.py``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numba
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
    parser.add_argument("--quick", action="store_true", help="a tiny setting, for tests")
    parser.add_argument("--out", type=Path, default=out_default)


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
    data = load_dataset(args.data, n_train=args.n_train, n_test=args.n_test)
    if args.crop_padding is None and data.name == "digits":
        args.crop_padding = 0
    return data, started


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
