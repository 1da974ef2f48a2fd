"""Table 1 of the paper at CPU scale: the auto-tune against the best ResNet.

The auto-tune (section 3.6, :func:`bundlelab.autotune.autotune`) starts from the 120-layer
plain net, trains it, and after the first epoch of every run removes the first block with
``H^l(t) > 0`` together with the rest of its stage, then restarts from scratch with the pruned
net; a run whose first epoch has no conflicting block trains to the end.  The baselines are
residual nets of the same family (default ResNet-20 and ResNet-50) trained as long; the best
of them by mean test accuracy over the seeds is the comparison, as in the paper.  Every
network is trained with each seed; the script reports layers, test accuracy (mean of the last
5 epochs), memory (size of a weights-only checkpoint in MB) and inference time of one batch
of 64 test images (ms per step) as mean +- std over seeds, and the auto-tune's evolution table
(epoch, blocks per stage a-d) of every seed (the supplementary's table).

What the paper reports (Table 1; full width, 120 epochs, Ranger): the auto-tune finds 17-24
layers (Mnist 17 +- 1 layers, 99.3%, 54 MB, 40 ms, against ResNet-50's 99.4%, 116 MB, 88 ms;
Cifar 19 +- 0.9 layers, 85.3% against ResNet-76's 85.7%), so about the accuracy of the best
ResNet at half the memory and inference time, and it prunes at most three times, within the
first three epochs.

Defaults (about 5 minutes on 2 CPU cores): scikit-learn's digits (8 x 8 images), width
multiplier 0.125, 30 epochs, seeds 0 1 2, Adam at learning rate 1e-2 (at 1e-3 a 20-layer ResNet
reached only about 70% in 30 epochs of 22 steps), batch 64, no random crops on digits but the
brightness augmentation.  The learning rate also sets the bundle metric's resolution
(``lr / batch``), so 1e-2 bundles more coarsely than the paper's 1e-3.  Times per step are
measured on whatever CPU runs the script (shared machines make them noisy).  Closer to the
paper, with the data files in DIR (a GPU and days)::

    python examples/autotune_vs_resnet.py --data cifar10:DIR --optimizer ranger --lr 1e-3 \\
        --epochs 120 --width-multiplier 1 --resnets resnet-50 resnet-76
    python examples/autotune_vs_resnet.py --data mnist:DIR --optimizer ranger --lr 1e-3 \\
        --epochs 120 --width-multiplier 1 --resnets resnet-50

Writes ``autotune-vs-resnet.json`` and ``autotune-vs-resnet.png`` to ``--out`` (default
``results/autotune_vs_resnet``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bundlelab.autotune import autotune  # noqa: E402
from bundlelab.spec import preset, stage_depths  # noqa: E402
from bundlelab.training import fit  # noqa: E402

from _common import (add_training_arguments, dataset_summary, fill_defaults,  # noqa: E402
                     save_png, start_experiment, training_config, write_results)

AUTOTUNE = "auto-tune"
METRICS = {"layers": "layers", "test_accuracy": "test accuracy",
           "checkpoint_mb": "memory [MB]", "ms_per_step": "time / step [ms]"}
FULL = {"start": "plain-120", "resnets": ["resnet-20", "resnet-50"], "epochs": 30,
        "seeds": [0, 1, 2], "n_train": None, "n_test": None}
QUICK = {"start": "plain-20", "resnets": ["resnet-10"], "epochs": 2, "seeds": [0],
         "n_train": 300, "n_test": 100}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start", help="the auto-tune's starting net (default plain-120)")
    parser.add_argument("--resnets", nargs="+", help="baselines (default resnet-20 resnet-50)")
    parser.add_argument("--width-multiplier", type=float, default=0.125)
    parser.add_argument("--check-epochs", type=int, default=1,
                        help="the auto-tune checks bundles after this many first epochs of a run")
    add_training_arguments(parser, Path("results/autotune_vs_resnet"), lr=1e-2,
                           epochs_help="epochs of every final run")
    args = parser.parse_args(argv)
    fill_defaults(args, QUICK, FULL)
    if not args.start.startswith("plain-"):
        parser.error(f"--start must be a plain net such as plain-120; got {args.start!r}")
    if not all(name.startswith("resnet-") for name in args.resnets):
        parser.error(f"--resnets must be residual nets such as resnet-50; got {args.resnets}")
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    return args


def figures(result) -> dict:
    """The Table 1 figures of a :class:`TrainingResult`."""
    entropy = result.bundle_entropy
    return {"layers": result.layers, "test_accuracy": result.test_accuracy,
            "checkpoint_mb": result.checkpoint_mb, "ms_per_step": result.ms_per_step,
            "parameters": result.parameters, "blocks": stage_depths(result.spec),
            "final_train_accuracy": result.history[-1].train_accuracy,
            "bundle_entropy_last": list(entropy.values())[-1] if entropy else 0.0,
            "conflicting_layers": sum(h > 0 for h in entropy.values())}


def run_one(name: str, seed: int, data, args) -> dict:
    """Train ``name`` (auto-tuned from ``args.start`` when it is :data:`AUTOTUNE`) with ``seed``."""
    config = training_config(args, seed)
    spec = preset(args.start if name == AUTOTUNE else name, input_shape=data.input_shape,
                  n_classes=data.n_classes, width_multiplier=args.width_multiplier)
    folder = args.out / "runs" / f"{name}-s{seed}" if args.resume else None
    start = time.perf_counter()
    if name == AUTOTUNE:
        tuned = autotune(spec, data, config=config, directory=folder,
                         check_epochs=args.check_epochs)
        row = {**figures(tuned.training), "restarts": len(tuned.restarts) - 1,
               "epochs_total": sum(r.epochs for r in tuned.restarts),
               "evolution": tuned.evolution()}
    else:
        row = figures(fit(spec, data, config=config, directory=folder))
    return {"name": name, "seed": seed, **row, "seconds": time.perf_counter() - start}


def mean_std(runs: list, name: str) -> dict:
    """Mean and (population) std over seeds of every Table 1 figure of ``name``."""
    chosen = [r for r in runs if r["name"] == name]
    out = {"name": name, "seeds": len(chosen)}
    for key in METRICS:
        values = [r[key] for r in chosen]
        out[key], out[f"{key}_std"] = float(np.mean(values)), float(np.std(values))
    return out


def plot(document: dict, path: Path) -> None:
    """Bars (mean +- std over seeds) of accuracy, layers, memory and time: auto-tune vs ResNets."""
    rows = [document["summary"][AUTOTUNE]] + [document["summary"][n] for n in document["resnets"]]
    names = [r["name"] for r in rows]
    colours = ["C2"] + ["C0" if n == document["best_resnet"] else "lightsteelblue"
                        for n in document["resnets"]]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.4 * len(METRICS), 3.8))
    for ax, (key, label) in zip(axes, METRICS.items()):
        means = [r[key] for r in rows]
        ax.bar(range(len(rows)), means, yerr=[r[f"{key}_std"] for r in rows], color=colours,
               capsize=4)
        for x, value in enumerate(means):
            ax.text(x, value, f"{value:.3g}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(rows)), names, rotation=20)
        ax.set_title(label)
    axes[list(METRICS).index("test_accuracy")].set_ylim(0, 1.1)
    fig.suptitle(f"auto-tune from {document['start']} vs ResNets (best: {document['best_resnet']}, "
                 f"dark blue); mean +- std over {len(document['seeds'])} seed(s)", fontsize=10)
    save_png(fig, path)


def main(argv=None) -> None:
    args = parse_args(argv)
    data, started = start_experiment(args)
    runs = []
    for seed in args.seeds:
        for name in [AUTOTUNE] + args.resnets:
            run = run_one(name, seed, data, args)
            runs.append(run)
            print(f"{name:<10} seed {seed}: {run['layers']} layers {run['blocks']}, test "
                  f"{run['test_accuracy']:.3f}, {run['checkpoint_mb']:.3f} MB, "
                  f"{run['ms_per_step']:.2f} ms/step ({run['seconds']:.0f} s)", flush=True)
    summary = {name: mean_std(runs, name) for name in [AUTOTUNE] + args.resnets}
    best = max(args.resnets, key=lambda name: summary[name]["test_accuracy"])
    document = {
        "experiment": "autotune_vs_resnet",
        "reproduces": "Peer et al. 2021, table 1 and the supplementary's evolution tables "
                      "(section 3.6)",
        "data": dataset_summary(data),
        "config": {"epochs": args.epochs, "check_epochs": args.check_epochs,
                   "optimizer": args.optimizer, "learning_rate": args.lr,
                   "batch_size": args.batch_size, "crop_padding": args.crop_padding,
                   "width_multiplier": args.width_multiplier,
                   "n_samples": args.n_samples, "threads": args.threads,
                   "device": args.device},
        "start": args.start, "resnets": args.resnets, "seeds": args.seeds, "best_resnet": best,
        "summary": summary,
        "evolution": {str(r["seed"]): r["evolution"] for r in runs if r["name"] == AUTOTUNE},
        "runs": runs,
    }
    write_results(document, args.out, "autotune-vs-resnet", plot=plot, started=started)

    print(f"\n{'name':<10} {'layers':>12} {'accuracy':>15} {'MB':>15} {'ms/step':>13}")
    for name in [AUTOTUNE] + args.resnets:
        s = summary[name]
        print(f"{name:<10} {s['layers']:>6.1f} ± {s['layers_std']:<4.1f}"
              f"{s['test_accuracy']:>8.3f} ± {s['test_accuracy_std']:<5.3f}"
              f"{s['checkpoint_mb']:>8.3f} ± {s['checkpoint_mb_std']:<5.3f}"
              f"{s['ms_per_step']:>7.2f} ± {s['ms_per_step_std']:<5.2f}"
              + ("  <- best ResNet" if name == best else ""))
    for seed, rows in document["evolution"].items():
        print(f"evolution, seed {seed}:")
        for row in rows:
            print("  " + ", ".join(f"{k} {v}" for k, v in row.items() if v != ""))
    print(f"wrote {args.out / 'autotune-vs-resnet.json'} and {args.out / 'autotune-vs-resnet.png'} "
          f"({document['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
