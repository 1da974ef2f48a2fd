"""Figure 6 of the paper at CPU scale: conv nets without ("VGG") and with residuals, over depth.

The paper's conv family (supplementary fig. 3; ``bundlelab.spec.conv_net``: a 7x7 stem, stages
a-d of basic blocks, global pooling, a linear head) is trained at each preset depth, without
and with residual connections.  After every epoch ``H^l(t)`` of every block is measured on the
training set (at most 2048 samples).  Per net the script records the test accuracy (mean of
the last 5 epochs) and the bundle entropy ``H^L``: ``H^L(t)`` of the last measured block,
averaged over the epochs (with several seeds: means over seeds).  It also keeps ``H^L(t)`` of
every run, the analogue of fig. 6b.

What the paper reports (Cifar-10 and Imagenette, Ranger, 120 epochs, full width): without
residuals the 4-layer net underfits, 10-40 layers are the most accurate with ``H^L = 0``, and
from about 40 layers (Cifar; 60 on Imagenette) ``H^L`` grows with depth while accuracy falls,
up to a fully conflicting bundle (``H^L ~ 2.3``) at chance accuracy at 120 layers; ``H^L(t)`` is
0 at initialisation and conflicts appear after the first epochs.  With residuals ``H^L = 0`` at
every depth and every depth is accurate.

Defaults: scikit-learn's digits resized to 32 x 32 (``--image-size 32``, bilinear; at 8 x 8
stages c and d see 1 x 1 maps, at 32 px stages a-d see 16/8/4/2-pixel maps), depths 4 10 20 30
50 76 100 120, width multiplier 0.125 (stem 8 filters, stages 8/16/32/64), 20 epochs, one seed, AdamW at
learning rate 1e-2 on a cosine schedule (the library's default), batch 64, no random crops on
digits but the brightness augmentation.  Note that the learning rate also enters the bundle
metric (resolution ``lr / batch``), so 1e-2 bundles more coarsely than the paper's 1e-3.
One epoch of plain-120 takes 5.9 s with the bundle measurement on one idle CPU thread; the
default run trains 8 + 8 nets of 820 layers in all, an estimated 15-20 minutes on an idle
2-core CPU from these per-epoch times (more on a shared one).  The seed-0 runs of plain-120 and ResNet-10/20/50 are the same runs as
``autotune_vs_resnet.py``'s (same options): with ``--resume`` their folders can be linked
into OUT/runs and are then reused, not trained again.  ``--resume`` keeps every run's folder
under OUT/runs, so a killed run continues where it stopped.  Closer to the paper (CIFAR-10
files in DIR; a GPU and days)::

    python examples/vgg_vs_resnet_depth.py --data cifar10:DIR --optimizer ranger --lr 1e-3 \\
        --epochs 120 --width-multiplier 1 --seeds 0 1 2

Writes ``vgg-vs-resnet.json`` and ``vgg-vs-resnet.png`` to ``--out`` (default
``results/vgg_vs_resnet_depth``).
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bundlelab.spec import PRESETS, preset  # noqa: E402
from bundlelab.training import fit  # noqa: E402

from _common import (add_training_arguments, data_description, dataset_summary,  # noqa: E402
                     fill_defaults, pinned_threads, run_folder, run_trials, save_png,
                     start_experiment, trial_data, training_config, write_results)

FAMILIES = {"plain": "plain (VGG, no residuals)", "resnet": "residual (ResNet)"}
FULL = {"depths": list(PRESETS), "epochs": 20, "seeds": [0], "n_train": None,
        "n_test": None, "image_size": 32}
QUICK = {"depths": [4, 10], "epochs": 2, "seeds": [0], "n_train": 300, "n_test": 100,
         "image_size": 16}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", type=int, nargs="+", help=f"a subset of {list(PRESETS)}")
    parser.add_argument("--width-multiplier", type=float, default=0.125)
    add_training_arguments(parser, Path("results/vgg_vs_resnet_depth"), lr=1e-2)
    args = parser.parse_args(argv)
    fill_defaults(args, QUICK, FULL)
    unknown = sorted(set(args.depths) - set(PRESETS))
    if unknown:
        parser.error(f"--depths must be presets {list(PRESETS)}; got {unknown}")
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    return args


def train_net(task: dict) -> dict:
    """Train one net (a trial, :func:`_common.run_trials`); its accuracy, ``H^L``
    (time-averaged, last block) and ``H^L(t)``.

    ``task``: ``family``, ``depth``, ``seed``, ``width_multiplier``, ``config`` (a seeded
    TrainConfig), ``folder`` (the run folder or None), ``data``
    (:func:`_common.data_description`) and ``threads``.
    """
    family, depth, seed = task["family"], task["depth"], task["seed"]
    data = trial_data(task["data"])
    spec = preset(f"{family}-{depth}", input_shape=data.input_shape, n_classes=data.n_classes,
                  width_multiplier=task["width_multiplier"])
    start = time.perf_counter()
    with pinned_threads(task["threads"]):
        result = fit(spec, data, config=task["config"], directory=task["folder"])
    entropy = result.bundle_entropy
    last = list(entropy)[-1]
    first = next((layer for layer, h in entropy.items() if h > 0), None)
    run = {"family": family, "depth": depth, "layers": result.layers, "seed": seed,
           "spec": spec.name, "parameters": result.parameters,
           "test_accuracy": result.test_accuracy,
           "final_train_accuracy": result.history[-1].train_accuracy,
           "last_layer": last, "bundle_entropy": entropy[last],
           "entropy_over_time": [r.report[last].entropy for r in result.history if r.report],
           "first_conflicting_layer": first,
           "conflicting_layers": sum(h > 0 for h in entropy.values()),
           "measured_layers": len(entropy), "seconds": time.perf_counter() - start}
    print(f"{run['spec']:<22} seed {seed}: test {run['test_accuracy']:.3f}, train "
          f"{run['final_train_accuracy']:.3f}, H^L {run['bundle_entropy']:.3f}, first "
          f"conflicting {run['first_conflicting_layer']} ({run['seconds']:.0f} s)", flush=True)
    return run


def summarise(runs: list, depths: list) -> dict:
    """Per family: seed means of accuracy and ``H^L`` per depth (and the spread over seeds)."""
    table = {}
    for family in FAMILIES:
        rows = []
        for depth in depths:
            cell = [r for r in runs if r["family"] == family and r["depth"] == depth]
            acc = [r["test_accuracy"] for r in cell]
            ent = [r["bundle_entropy"] for r in cell]
            rows.append({"depth": depth, "test_accuracy": float(np.mean(acc)),
                         "test_accuracy_std": float(np.std(acc)),
                         "bundle_entropy": float(np.mean(ent)),
                         "bundle_entropy_std": float(np.std(ent)),
                         "conflicting_seeds": sum(e > 0 for e in ent), "seeds": len(cell)})
        table[family] = rows
    return table


def plot(document: dict, path: Path) -> None:
    """(a) accuracy vs depth, (b) H^L vs depth for both families, (c) H^L(t) of the deepest nets."""
    fig, (acc, ent, over_time) = plt.subplots(1, 3, figsize=(15, 4.2))
    for family, label in FAMILIES.items():
        rows = document["table"][family]
        depths = [r["depth"] for r in rows]
        acc.errorbar(depths, [r["test_accuracy"] for r in rows],
                     yerr=[r["test_accuracy_std"] for r in rows], marker="o", capsize=3,
                     label=label)
        ent.errorbar(depths, [r["bundle_entropy"] for r in rows],
                     yerr=[r["bundle_entropy_std"] for r in rows], marker="o", capsize=3,
                     label=label)
        deepest = [r for r in document["runs"] if r["family"] == family
                   and r["depth"] == max(depths) and r["seed"] == document["seeds"][0]]
        series = deepest[0]["entropy_over_time"]
        over_time.plot(range(1, len(series) + 1), series, marker=".",
                       label=f"{family}-{max(depths)}")
    max_entropy = float(np.log(document["data"]["n_classes"]))
    for ax in (ent, over_time):
        ax.axhline(max_entropy, color="grey", linestyle=":", linewidth=1)
        ax.text(ax.get_xlim()[0], max_entropy, " ln(N_c)", va="bottom", fontsize=8, color="grey")
        ax.set_ylim(-0.05, max_entropy * 1.12)
    acc.set_ylim(0, 1)
    acc.set_title("test accuracy (mean of last 5 epochs)")
    ent.set_title("bundle entropy H^L (last block, time-averaged)")
    over_time.set_title(f"H^L(t) of the deepest nets (seed {document['seeds'][0]})")
    for ax in (acc, ent):
        ax.set_xlabel("layers")
        ax.set_xticks(document["depths"])
        ax.legend(fontsize=8)
    over_time.set_xlabel("epoch")
    over_time.legend(fontsize=8)
    save_png(fig, path)


def main(argv=None) -> None:
    args = parse_args(argv)
    data, started = start_experiment(args)
    grid = list(itertools.product(args.depths, FAMILIES, args.seeds))
    # the spec's name, as the run folders have always been called
    names = [preset(f"{family}-{depth}", input_shape=data.input_shape,
                    n_classes=data.n_classes, width_multiplier=args.width_multiplier).name
             + f"-s{seed}" for depth, family, seed in grid]
    tasks = [{"family": family, "depth": depth, "seed": seed,
              "width_multiplier": args.width_multiplier, "config": training_config(args, seed),
              "folder": run_folder(args, name), "data": data_description(args),
              "threads": args.threads}
             for (depth, family, seed), name in zip(grid, names)]
    runs = run_trials(train_net, tasks, names, args)
    document = {
        "experiment": "vgg_vs_resnet_depth",
        "reproduces": "Peer et al. 2021, figure 6 (sections 3.4 and 3.5)",
        "data": dataset_summary(data),
        "config": {"epochs": args.epochs, "image_size": args.image_size,
                   "optimizer": args.optimizer, "learning_rate": args.lr,
                   "batch_size": args.batch_size, "crop_padding": args.crop_padding,
                   "width_multiplier": args.width_multiplier,
                   "n_samples": args.n_samples, "threads": args.threads},
        "depths": args.depths, "seeds": args.seeds,
        "table": summarise(runs, args.depths), "runs": runs,
    }
    write_results(document, args.out, "vgg-vs-resnet", plot=plot, started=started)
    print(f"\n{'layers':>6} | {'plain acc':>9} {'plain H^L':>9} | "
          f"{'resnet acc':>10} {'resnet H^L':>10}")
    for p, r in zip(document["table"]["plain"], document["table"]["resnet"]):
        print(f"{p['depth']:>6} | {p['test_accuracy']:>9.3f} {p['bundle_entropy']:>9.3f} | "
              f"{r['test_accuracy']:>10.3f} {r['bundle_entropy']:>10.3f}")
    print(f"wrote {args.out / 'vgg-vs-resnet.json'} and {args.out / 'vgg-vs-resnet.png'} "
          f"({document['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
