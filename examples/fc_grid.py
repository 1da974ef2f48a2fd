"""Figures 1 and 5 of the paper at CPU scale: fully connected nets over width x depth.

Every net of a width x depth grid (``depth`` hidden ReLU layers of ``width`` units, He init, a
linear head) is trained for ``--epochs`` epochs; after every epoch ``H^l(t)`` of every hidden
layer is measured on the training set (at most 2048 samples, as in the paper).  Per net the
script records the test accuracy (mean of the last 5 epochs) and the bundle entropy ``H^L``:
``H^L(t)`` of the last hidden layer averaged over the measured epochs (the paper's section 2).
A cell is *conflicting* when ``H^L > 0``; with several seeds the cell's numbers are the means
over seeds, so a cell is conflicting when any seed's net was.

It then checks the paper's shortcut (section 3.3): "it is sufficient to only evaluate the
deepest network to find the conflicting boundary".  For each width, the deepest net of the grid
gives a first conflicting layer ``k`` -- the first hidden layer whose *time-averaged* ``H^l`` is
> 0 (seed-averaged), i.e. the same statistic the grid uses for ``H^L``; the layer found after
the *first epoch* alone is reported next to it.  It predicts that the nets of that width with
``depth >= k`` conflict and the shallower ones do not; the agreement with the grid is reported
per width.  Finally the Spearman rank correlation between ``H^L`` and test accuracy over the
cells (scipy.stats.spearmanr; ties, such as the many ``H^L = 0``, get average ranks).

What the paper reports (Mnist, Ranger, 50 epochs): the conflicting boundary separates the
accurate nets (shallow enough for their width) from the rest (fig. 1); narrow nets conflict
earlier in depth; the first conflicting layer of a width is the same for a 25- and a 150-layer
net (layer 19 at width 25); ``H^L`` is negatively correlated with test accuracy (fig. 5), and
very narrow, very deep nets end in a fully conflicting bundle (``H^L ~ ln 10 = 2.3``) at chance
accuracy.

Defaults (about 5 minutes on 2 CPU cores): scikit-learn's digits (1347 training, 450 test
images of 8 x 8), widths 3 5 8 16 32 64, depths 1 2 4 8 16 32 64, 50 epochs, one seed, Adam at
learning rate 1e-3 (the paper's Ranger learned much slower in 50 epochs of 22 steps),
batch 64, no random crops (an MLP on 8 x 8 pixels learns much slower with 1-pixel shifts) but
the brightness augmentation.  The learning rate and batch size also set the bundle metric's
resolution, as in the paper.  Closer to the paper (Mnist files in DIR, 60k images; hours)::

    python examples/fc_grid.py --data mnist:DIR --optimizer ranger --epochs 50 \\
        --widths 5 10 25 50 100 --depths 1 2 5 10 25 50 100 150 --seeds 0 1 2

Writes ``fc-grid.json`` (every run, the grid, the correlation, the deepest-net check) and
``fc-grid.png`` to ``--out`` (default ``results/fc_grid``).
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from bundlelab.spec import fully_connected  # noqa: E402
from bundlelab.training import fit  # noqa: E402

from _common import (add_training_arguments, data_description, dataset_summary,  # noqa: E402
                     fill_defaults, pinned_threads, run_folder, run_trials, save_png,
                     start_experiment, trial_data, training_config, write_results)

FULL = {"widths": [3, 5, 8, 16, 32, 64], "depths": [1, 2, 4, 8, 16, 32, 64], "epochs": 50,
        "seeds": [0], "n_train": None, "n_test": None}
QUICK = {"widths": [3, 32], "depths": [1, 4], "epochs": 2, "seeds": [0], "n_train": 300,
         "n_test": 100}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", type=int, nargs="+")
    parser.add_argument("--depths", type=int, nargs="+")
    add_training_arguments(parser, Path("results/fc_grid"), lr=1e-3, crop_padding=0)
    args = parser.parse_args(argv)
    fill_defaults(args, QUICK, FULL)
    if min(args.widths + args.depths + [args.epochs]) < 1:
        parser.error("widths, depths and epochs must be at least 1")
    return args


def finite(value):
    """``value`` as a float, or None where it is NaN (strict JSON has no NaN)."""
    return None if value is None or math.isnan(value) else float(value)


def train_net(task: dict) -> dict:
    """Train one net (a trial, :func:`_common.run_trials`): accuracy, ``H^L``, time-averaged
    and first-epoch ``H^l`` of every layer.

    ``task``: ``width``, ``depth``, ``seed``, ``config`` (a seeded TrainConfig), ``folder`` (the
    run folder or None), ``data`` (:func:`_common.data_description`) and ``threads``.
    """
    width, depth, seed = task["width"], task["depth"], task["seed"]
    data = trial_data(task["data"])
    spec = fully_connected(width, depth, input_shape=data.input_shape, n_classes=data.n_classes)
    start = time.perf_counter()
    with pinned_threads(task["threads"]):
        result = fit(spec, data, config=task["config"], directory=task["folder"])
    entropy = result.bundle_entropy
    first_epoch = next(r.report for r in result.history if r.report is not None)
    run = {"width": width, "depth": depth, "seed": seed, "test_accuracy": result.test_accuracy,
           "final_train_accuracy": result.history[-1].train_accuracy,
           "bundle_entropy": entropy[f"dense{depth}"], "entropy_per_layer": list(entropy.values()),
           "entropy_per_layer_epoch1": [layer.entropy for layer in first_epoch],
           "seconds": time.perf_counter() - start}
    print(f"width {width:>3} depth {depth:>3} seed {seed}: "
          f"test {run['test_accuracy']:.3f}, "
          f"H^L {run['bundle_entropy']:.3f} ({run['seconds']:.1f} s)", flush=True)
    return run


def first_positive(values) -> int | None:
    """1-based index of the first value > 0, or None."""
    return next((k + 1 for k, v in enumerate(values) if v > 0), None)


def grid_of(runs: list, widths: list, depths: list, key: str) -> np.ndarray:
    """Seed-mean of ``key`` per cell, shape (n_depths, n_widths)."""
    grid = np.zeros((len(depths), len(widths)))
    for i, depth in enumerate(depths):
        for j, width in enumerate(widths):
            cell = [r[key] for r in runs if r["width"] == width and r["depth"] == depth]
            grid[i, j] = np.mean(cell)
    return grid


def deepest_net_check(runs: list, widths: list, depths: list, conflicting: np.ndarray) -> list:
    """Per width: the deepest net's first conflicting layer, the boundary it predicts, agreement."""
    rows = []
    for j, width in enumerate(widths):
        deep = [r for r in runs if r["width"] == width and r["depth"] == depths[-1]]
        averaged = first_positive(np.mean([r["entropy_per_layer"] for r in deep], axis=0))
        epoch1 = first_positive(np.mean([r["entropy_per_layer_epoch1"] for r in deep], axis=0))
        observed = [bool(c) for c in conflicting[:, j]]

        def agreement(k):
            predicted = [k is not None and d >= k for d in depths]
            return (sum(p == o for p, o in zip(predicted, observed)) / len(depths),
                    [d for d, p, o in zip(depths, predicted, observed) if p != o])

        share, mismatched = agreement(averaged)
        share1, mismatched1 = agreement(epoch1)
        rows.append({
            "width": width, "deepest_depth": depths[-1],
            "first_conflicting_layer": averaged, "first_conflicting_layer_epoch1": epoch1,
            "observed_first_conflicting_depth":
                next((d for d, o in zip(depths, observed) if o), None),
            "observed_conflicting": observed,
            "agreement": share, "mismatched_depths": mismatched,
            "agreement_epoch1": share1, "mismatched_depths_epoch1": mismatched1,
        })
    return rows


def plot(document: dict, path: Path) -> None:
    """Test-accuracy heat map with the conflicting cells and predicted boundary; H^L vs accuracy."""
    widths, depths = document["widths"], document["depths"]
    accuracy = np.array(document["grid"]["test_accuracy"])
    conflicting = np.array(document["grid"]["conflicting"])
    fig, (heat, scatter) = plt.subplots(1, 2, figsize=(12, 5))
    image = heat.imshow(accuracy, origin="lower", cmap="viridis", vmin=0, vmax=1, aspect="auto")
    fig.colorbar(image, ax=heat, label="test accuracy")
    for i in range(len(depths)):
        for j in range(len(widths)):
            if conflicting[i, j]:
                heat.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="//",
                                         edgecolor=(0, 0, 0, 0.45), linewidth=0))
            heat.text(j, i, f"{accuracy[i, j]:.2f}", ha="center", va="center", fontsize=8,
                      bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 1})
    for key, style, label in (("first_conflicting_layer", "-", "time-averaged H^l"),
                              ("first_conflicting_layer_epoch1", "--", "H^l(t) after epoch 1")):
        for j, row in enumerate(document["deepest_net_check"]):
            k = row[key]
            below = sum(d < k for d in depths) if k is not None else len(depths)
            heat.plot([j - 0.5, j + 0.5], [below - 0.5] * 2, style, linewidth=3,
                      color="red" if style == "-" else "orange",
                      label=f"boundary from the deepest net, {label}" if j == 0 else None)
    heat.set_xticks(range(len(widths)), widths)
    heat.set_yticks(range(len(depths)), depths)
    heat.set_xlabel("width (units per hidden layer)")
    heat.set_ylabel("depth (hidden layers)")
    heat.set_title("test accuracy; hatched: H^L > 0 (conflicting)")
    heat.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), fontsize=8, ncol=1)

    entropy = np.array(document["grid"]["bundle_entropy"]).ravel()
    colours = np.repeat(np.log2(widths)[None, :], len(depths), axis=0).ravel()
    points = scatter.scatter(entropy, accuracy.ravel(), c=colours, cmap="plasma", s=30)
    fig.colorbar(points, ax=scatter, label="log2(width)")
    rho = document["spearman"]
    label = "n/a" if rho["rho"] is None else f"{rho['rho']:.2f} (p = {rho['p_value']:.1e})"
    scatter.set_title(f"H^L vs test accuracy, Spearman rho = {label}")
    scatter.set_xlabel("bundle entropy H^L (last hidden layer, time-averaged)")
    scatter.set_ylabel("test accuracy")
    save_png(fig, path)


def main(argv=None) -> None:
    args = parse_args(argv)
    data, started = start_experiment(args)
    grid = list(itertools.product(args.widths, args.depths, args.seeds))
    # the spec's name, as the run folders have always been called
    names = [f"{fully_connected(w, d, input_shape=data.input_shape, n_classes=data.n_classes).name}"
             f"-s{seed}" for w, d, seed in grid]
    tasks = [{"width": width, "depth": depth, "seed": seed,
              "config": training_config(args, seed), "folder": run_folder(args, name),
              "data": data_description(args), "threads": args.threads}
             for (width, depth, seed), name in zip(grid, names)]
    runs = run_trials(train_net, tasks, names, args)

    accuracy = grid_of(runs, args.widths, args.depths, "test_accuracy")
    entropy = grid_of(runs, args.widths, args.depths, "bundle_entropy")
    conflicting = entropy > 0
    rho, p_value = (spearmanr(entropy.ravel(), accuracy.ravel()) if entropy.size > 2
                    else (math.nan, math.nan))
    document = {
        "experiment": "fc_grid", "reproduces": "Peer et al. 2021, figures 1 and 5 (section 3.3)",
        "data": dataset_summary(data),
        "config": {"epochs": args.epochs, "optimizer": args.optimizer, "learning_rate": args.lr,
                   "batch_size": args.batch_size, "crop_padding": args.crop_padding,
                   "n_samples": args.n_samples, "threads": args.threads},
        "widths": args.widths, "depths": args.depths, "seeds": args.seeds,
        "grid": {"axes": ["depth", "width"], "test_accuracy": accuracy.tolist(),
                 "bundle_entropy": entropy.tolist(), "conflicting": conflicting.tolist()},
        "spearman": {"rho": finite(rho), "p_value": finite(p_value), "n": int(entropy.size)},
        "deepest_net_check": deepest_net_check(runs, args.widths, args.depths, conflicting),
        "runs": runs,
    }
    write_results(document, args.out, "fc-grid", plot=plot, started=started)

    print(f"\nSpearman rho(H^L, test accuracy) = {document['spearman']['rho']}, "
          f"p = {document['spearman']['p_value']} over {entropy.size} cells")
    print("deepest net per width -> first conflicting layer (time-averaged / epoch 1), agreement:")
    for row in document["deepest_net_check"]:
        print(f"  width {row['width']:>3}: layer {row['first_conflicting_layer']} / "
              f"{row['first_conflicting_layer_epoch1']}; grid boundary at depth "
              f"{row['observed_first_conflicting_depth']}; agreement {row['agreement']:.2f} / "
              f"{row['agreement_epoch1']:.2f}")
    print(f"wrote {args.out / 'fc-grid.json'} and {args.out / 'fc-grid.png'} "
          f"({document['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
